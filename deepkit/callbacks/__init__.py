"""deepkit.callbacks."""
from deepkit.callbacks.anneal import AnnealOnPlateau
from deepkit.callbacks.backup import ExactBackupAndRestore
from deepkit.callbacks.nan_guard import StopOnNaN
from deepkit.callbacks.rich_progress import RichProgressBar
from deepkit.callbacks.stop_at_target import StopAtTarget
from deepkit.callbacks.momentum import MomentumSchedule
from deepkit.callbacks.expert_load import ExpertLoad
from deepkit.callbacks.interrupt import StopOnInterrupt, TrainingInterrupted
from deepkit.callbacks.time_limit import TimeLimit
from deepkit.callbacks.reset_states import ResetStates, reset_states, stateful_layers
from deepkit.callbacks.sample_grid import SampleGrid
