"""deepkit.training."""
from deepkit.training.schedules import ExponentialDecayWithFloor
