"""deepkit.metrics."""
from deepkit.metrics.sequence import BitsPerCharacter, FrameBinaryCrossentropy, FrameNLL, Perplexity
from deepkit.metrics.tasks import SequenceErrorRate, sequence_errors, task_solved
from deepkit.metrics.parzen import (
    Neighbours,
    ParzenEstimate,
    SigmaSelection,
    nearest_neighbours,
    parzen_log_likelihood,
    select_sigma,
)
from deepkit.metrics.csl import csl_log_likelihood
