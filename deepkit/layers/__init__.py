"""deepkit.layers."""
from deepkit.layers.maxout import Maxout, MaxoutConv2D
