"""deepkit.callbacks."""
from deepkit.callbacks.backup import ExactBackupAndRestore
from deepkit.callbacks.nan_guard import StopOnNaN
from deepkit.callbacks.rich_progress import RichProgressBar
from deepkit.callbacks.stop_at_target import StopAtTarget
