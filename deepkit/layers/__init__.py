"""deepkit.layers."""
from deepkit.layers.maxout import Maxout, MaxoutConv2D
from deepkit.layers.deep_transition import DeepTransitionCell, DeepTransitionRNN
from deepkit.layers.initializers import SparseSingular
