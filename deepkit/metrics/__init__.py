"""deepkit.metrics."""
from deepkit.metrics.sequence import BitsPerCharacter, FrameBinaryCrossentropy, FrameNLL, Perplexity
from deepkit.metrics.tasks import SequenceErrorRate, sequence_errors, task_solved
