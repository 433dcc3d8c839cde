"""deepkit.training."""
from deepkit.training.schedules import ExponentialDecayWithFloor
from deepkit.training.schedules import VariableMomentumSGD
from deepkit.training.scales import ScaledSGD
