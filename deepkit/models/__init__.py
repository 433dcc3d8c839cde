"""deepkit.models."""
from deepkit.models.conditional import ConditionalGatedMLP
