"""deepkit.metrics."""
from deepkit.metrics.sequence import BitsPerCharacter, FrameBinaryCrossentropy, FrameNLL, Perplexity
