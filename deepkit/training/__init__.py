"""deepkit.training: every procedure that changes how gradients are made or
applied, or that is more than one `fit` call."""
from deepkit.training.schedules import ExponentialDecayWithFloor
from deepkit.training.schedules import VariableMomentumSGD
from deepkit.training.scales import ScaledSGD
from deepkit.training.stages import (Stage, StageError, StageResult, Trainer,
                                     TrainingDiverged, fit_stages, previous_train_loss)
from deepkit.training.alternation import Alternation, balanced_assignment, fit_alternating
from deepkit.training.clipping import (AverageNorm, ClipGradients, ClippingLogs, NonFiniteGradient,
                                       PercentileNorm, ThresholdRule, ZScoreNorm,
                                       adaptive_clip, clip_by_global_norm, clip_by_value,
                                       global_norm)
from deepkit.training.vanishing import (VanishingGradientRegularizer, backproject,
                                        vanishing_penalty)
from deepkit.training.loss_weights import LinearRamp, LossWeightScheduler, ScheduledLoss, loss_weight_step
from deepkit.training.layerwise import DenoisingPretraining, reconstruction_loss
