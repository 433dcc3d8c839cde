"""deepkit.layers."""
from deepkit.layers.maxout import Maxout, MaxoutConv2D
from deepkit.layers.corruption import (
    BinomialSample,
    GaussianCorruption,
    MaskingCorruption,
    SaltAndPepper,
)
from deepkit.layers.deep_transition import DeepTransitionCell, DeepTransitionRNN
from deepkit.layers.expert_mlp import ExpertMLP
from deepkit.layers.gated_experts import GatedExperts
from deepkit.layers.stochastic import NoisyReLU, StochasticBinaryGate
from deepkit.layers.initializers import SparseSingular, SparseSpectral, SpectralRadius
from deepkit.layers.weight_noise import NoisyDense
