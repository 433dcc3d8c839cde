"""Weight initializers used by the papers' recipes.

`SparseSingular` is the recurrent initialization of Pascanu et al.'s deep RNN
experiments (GroundHog's tutorials): a sparse matrix, a fixed number of
non-zeros per unit, scaled so that its largest singular value is 1.
"""

import random

import keras
from keras import ops

from deepkit.export import export


@export
class SparseSingular(keras.initializers.Initializer):
    """Sparse matrix scaled to a given largest singular value.

    Each row (each input unit, in Keras' `x @ W` convention) gets `nonzeros`
    non-zero entries in randomly chosen columns, drawn uniformly from
    [−1, 1]; the whole matrix is then multiplied so that its largest singular
    value (its spectral norm) equals `scale`. With `scale=1` the linear part
    of the recurrence neither grows nor shrinks a state along its most
    amplified direction, and the sparsity keeps the units' inputs diverse.

    Args:
        nonzeros: non-zero entries per row (at most the number of columns).
        scale: the largest singular value of the result.
        seed: an integer for reproducible draws; None draws one from
            Python's `random` (seeded by `keras.utils.set_random_seed`).

    Example:

    ```python
    layer = DeepTransitionRNN(400, transition_layers=[400], shortcut=True,
                              recurrent_initializer=SparseSingular(nonzeros=20))
    ```

    Reference:
        Pascanu, Gulcehre, Cho, Bengio, "How to Construct Deep Recurrent
        Neural Networks", ICLR 2014, arXiv:1312.6026 (Sec. 5, after
        Sutskever et al. 2013 and Martens 2010); `pascanur/GroundHog`,
        `scripts/DT_RNN_Tut.py` (20 non-zeros, largest singular value 1).
    """

    def __init__(self, nonzeros=20, scale=1.0, seed=None):
        if not isinstance(nonzeros, int) or isinstance(nonzeros, bool) or nonzeros < 1:
            raise ValueError(f"nonzeros must be a positive integer, got {nonzeros!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.nonzeros = nonzeros
        self.scale = float(scale)
        self._init_seed = seed
        self.seed = seed if seed is not None else random.randint(1, 2**31 - 1)

    def __call__(self, shape, dtype=None):
        if len(shape) != 2:
            raise ValueError(f"SparseSingular initializes matrices, got shape {shape}")
        rows, cols = shape
        dtype = dtype or keras.backend.floatx()
        keep = min(self.nonzeros, cols)
        # A random permutation of the columns of each row: the first `keep`
        # positions of each row's permutation hold its non-zeros.
        order = ops.argsort(keras.random.uniform((rows, cols), seed=self.seed), axis=-1)
        rank = ops.argsort(order, axis=-1)
        mask = ops.cast(ops.less(rank, keep), dtype)
        values = keras.random.uniform(
            (rows, cols), minval=-1.0, maxval=1.0, dtype=dtype, seed=self.seed + 1
        )
        matrix = ops.multiply(values, mask)
        largest = ops.max(ops.svd(ops.cast(matrix, "float32"), compute_uv=False))
        return ops.cast(ops.multiply(matrix, self.scale / largest), dtype)

    def get_config(self):
        return {"nonzeros": self.nonzeros, "scale": self.scale, "seed": self._init_seed}
