"""deepkit.models."""
from deepkit.models.conditional import ConditionalGatedMLP
from deepkit.models.hard_mixture import HardParallelMixture
from deepkit.models.gsn import GSN, DenoisingAutoencoder
from deepkit.models.structured_mlp import StructuredMLP
