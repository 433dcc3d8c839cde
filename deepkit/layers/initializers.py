"""Weight initializers used by the papers' recipes.

`SparseSingular` is the recurrent initialization of Pascanu et al.'s deep RNN
experiments (GroundHog's tutorials): a sparse matrix, a fixed number of
non-zeros per unit, scaled so that its largest singular value is 1.

`SparseSpectral` is the "smart" tanh initialization of Pascanu, Mikolov and
Bengio 2013 (`pascanur/trainingRNNs`): a sparse matrix, a fixed number of
non-zeros per unit, scaled so that its spectral radius (its largest absolute
eigenvalue) is 0.95. `SpectralRadius` rescales any square initializer's
output to a given spectral radius.

The largest singular value of a matrix bounds its spectral radius from above
and the two agree only for normal matrices, which sparse random matrices
almost never are: a `SparseSingular` matrix with largest singular value 1
typically has a spectral radius between 0.5 and 0.6.
"""

import math
import random

import keras
import numpy as np
from keras import ops

from deepkit.export import export


@export
class SparseSingular(keras.initializers.Initializer):
    """Sparse matrix scaled to a given largest singular value (spectral norm).

    Each row (each input unit, in Keras' `x @ W` convention) gets `nonzeros`
    non-zero entries in randomly chosen columns, drawn uniformly from
    [−1, 1]; the whole matrix is then multiplied so that its largest singular
    value (its spectral norm, the largest factor by which it stretches any
    vector) equals `scale`. With `scale=1` the linear part of the recurrence
    grows no state, in any direction, in a single step, and the sparsity
    keeps the units' inputs diverse.

    This is not the spectral radius (the largest absolute eigenvalue, which
    governs how a state grows over many steps): the largest singular value
    bounds the spectral radius from above, and for sparse random matrices the
    radius is typically well below it (50 x 50 to 400 x 400 matrices with 20
    non-zeros per row and `scale=1` have radii of 0.5 to 0.6). Use
    `SparseSpectral` for a sparse matrix scaled to a given spectral radius,
    as in Pascanu, Mikolov and Bengio 2013, or `SpectralRadius` to rescale
    any square initializer.

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


def _square_size(shape, name):
    """The side of a square matrix `shape`; a ValueError naming `name` otherwise."""
    shape = tuple(shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(
            f"{name} initializes square matrices (a spectral radius needs one), "
            f"got shape {shape}"
        )
    return int(shape[0])


def _spectral_radius(matrix):
    """The largest absolute eigenvalue of a square numpy matrix (float64)."""
    if matrix.size == 0:
        return 0.0
    return float(np.max(np.abs(np.linalg.eigvals(matrix))))


def _rescaled(matrix, radius, dtype, name):
    """`matrix` (numpy) times `radius / its spectral radius`, as a backend tensor.

    The eigenvalues are computed on the host with numpy in float64 (keras.ops
    has no eigenvalue routine that runs on every backend and device); the
    result is cast to `dtype`.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.size:
        current = _spectral_radius(matrix)
        if not (math.isfinite(current) and current > 0):
            raise ValueError(
                f"{name}: the drawn matrix has spectral radius {current!r}, so it "
                "cannot be rescaled to a spectral radius (a nilpotent or non-finite "
                "matrix); use another initializer or seed"
            )
        matrix = matrix * (radius / current)
    work = "float64" if dtype == "float64" else "float32"
    return ops.cast(ops.convert_to_tensor(matrix.astype(work)), dtype)


def _check_radius(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


@export
class SpectralRadius(keras.initializers.Initializer):
    """Rescales another initializer's square matrices to a given spectral radius.

    Calls `initializer` and multiplies its output so that its spectral radius,
    the largest absolute eigenvalue, equals `radius`. The spectral radius of a
    recurrent matrix `W` decides whether the linear part of `h_t = f(h_{t-1} @ W
    + ...)` shrinks (radius below 1) or grows (above 1) states over many steps;
    for a linear recurrence Pascanu, Mikolov and Bengio (2013) show that a
    radius below 1 suffices for the long-term gradient components to vanish
    and that one above 1 is necessary for them to explode. The largest
    singular value, which `SparseSingular` sets, only bounds the radius from
    above.

    The eigenvalues are computed with numpy on the host, in float64, once per
    call (an initializer runs eagerly when a layer is built); this costs
    O(n³) for an n x n matrix, about a second for n = 2000.

    Args:
        initializer: a Keras initializer, its name or its config dict (as
            accepted by `keras.initializers.get`) that makes square matrices.
        radius: the spectral radius of the result, a positive number.

    Example:

    ```python
    layer = keras.layers.SimpleRNN(
        50, recurrent_initializer=SpectralRadius(
            keras.initializers.RandomNormal(stddev=0.1, seed=1), radius=1.1))
    ```

    Reference:
        Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent
        neural networks", ICML 2013, arXiv:1211.5063 (Sec. 2: the spectral
        radius and vanishing or exploding gradients).
    """

    def __init__(self, initializer, radius=1.0):
        if initializer is None or isinstance(initializer, bool):
            raise ValueError(f"initializer must be a Keras initializer, got {initializer!r}")
        try:
            resolved = keras.initializers.get(initializer)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"initializer must be a Keras initializer, got {initializer!r}") from error
        if not callable(resolved):
            raise ValueError(f"initializer must be a Keras initializer, got {initializer!r}")
        self.initializer = resolved
        self.radius = _check_radius(radius, "radius")

    def __call__(self, shape, dtype=None):
        _square_size(shape, "SpectralRadius")
        dtype = keras.backend.standardize_dtype(dtype or keras.backend.floatx())
        values = ops.convert_to_numpy(self.initializer(tuple(shape), dtype=dtype))
        return _rescaled(values, self.radius, dtype, "SpectralRadius")

    def get_config(self):
        return {
            "initializer": keras.initializers.serialize(self.initializer),
            "radius": self.radius,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["initializer"] = keras.initializers.deserialize(config["initializer"])
        return cls(**config)


@export
class SparseSpectral(keras.initializers.Initializer):
    """Sparse square matrix scaled to a given spectral radius.

    The "smart" tanh initialization of Pascanu, Mikolov and Bengio (2013):
    every unit gets `nonzeros` non-zero recurrent weights to randomly chosen
    units, with values drawn from a standard normal distribution (or uniformly
    from [−1, 1]); the whole matrix is then multiplied so that its spectral
    radius, its largest absolute eigenvalue, equals `spectral_radius`. With a
    radius just below 1 the linear part of the recurrence neither explodes nor
    quickly forgets, and the sparsity keeps the units' inputs diverse.

    In Keras' `h @ W` convention row `i` of `W` holds unit `i`'s outgoing
    weights (what it sends to every unit at the next step) and column `j`
    unit `j`'s incoming weights. The authors' code (`RNN.py`, `smart_tanh`,
    which computes `dot(h_tm1, W_hh)`) sparsifies rows: `connections=
    "outgoing"`, the default. `"incoming"` sparsifies columns instead (each
    unit sums exactly `nonzeros` others); for the same seed it gives the
    transpose of the `"outgoing"` matrix, which has the same spectral radius.

    The scale of the draws does not matter (the matrix is rescaled), so the
    authors' N(0, 0.01²) is the standard normal here. `nonzeros` larger than
    the matrix is capped at its size (a dense matrix). The eigenvalues are
    computed with numpy on the host, in float64; the draws come from numpy's
    `default_rng(seed)`, so a seed gives the same matrix on every backend.
    Calling the same instance twice gives the same matrix.

    Args:
        nonzeros: non-zero entries per unit (a positive integer; capped at the
            number of units).
        spectral_radius: the largest absolute eigenvalue of the result, a
            positive number (0.95 in the paper).
        distribution: `"normal"` (standard normal non-zeros, as in the
            authors' code) or `"uniform"` (uniform on [−1, 1], as in
            `SparseSingular`). For the same seed both have the same sparsity
            pattern.
        connections: `"outgoing"` (`nonzeros` per row, the authors' code) or
            `"incoming"` (`nonzeros` per column).
        seed: an integer for reproducible draws; None draws one from
            Python's `random` at construction (seeded by
            `keras.utils.set_random_seed`).

    Example:

    ```python
    # The temporal-order task's "smart" tanh network (50 tanh units).
    layer = keras.layers.SimpleRNN(
        50, activation="tanh",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        recurrent_initializer=SparseSpectral(nonzeros=15, spectral_radius=0.95))
    ```

    Reference:
        Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent
        neural networks", ICML 2013, arXiv:1211.5063 (the temporal-order
        experiments: sparse tanh networks, 15 connections per unit, spectral
        radius 0.95); `pascanur/trainingRNNs`, `RNN.py`, function `jobman`,
        branch `state['init'] == 'smart_tanh'` (normal draws, 15 kept per
        row of `W_hh`, rescaled with `numpy.linalg.eigvals` to radius 0.95).
    """

    DISTRIBUTIONS = ("normal", "uniform")
    CONNECTIONS = ("outgoing", "incoming")

    def __init__(self, nonzeros=15, spectral_radius=0.95, distribution="normal",
                 connections="outgoing", seed=None):
        if not isinstance(nonzeros, int) or isinstance(nonzeros, bool) or nonzeros < 1:
            raise ValueError(f"nonzeros must be a positive integer, got {nonzeros!r}")
        spectral_radius = _check_radius(spectral_radius, "spectral_radius")
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {self.DISTRIBUTIONS}, got {distribution!r}")
        if connections not in self.CONNECTIONS:
            raise ValueError(
                f"connections must be one of {self.CONNECTIONS}, got {connections!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.nonzeros = nonzeros
        self.spectral_radius = spectral_radius
        self.distribution = distribution
        self.connections = connections
        self._init_seed = seed
        self.seed = seed if seed is not None else random.randint(1, 2**31 - 1)

    def sparse_matrix(self, units):
        """The unscaled float64 numpy matrix for `units` units."""
        rng = np.random.default_rng(self.seed)
        keep = min(self.nonzeros, units)
        # Each row's non-zeros sit at the first `keep` columns of a random
        # permutation of the columns; the pattern is drawn before the values,
        # so both distributions share it.
        columns = np.argsort(rng.random((units, units)), axis=1)[:, :keep]
        mask = np.zeros((units, units), dtype=bool)
        np.put_along_axis(mask, columns, True, axis=1)
        if self.distribution == "normal":
            values = rng.standard_normal((units, units))
        else:
            values = rng.uniform(-1.0, 1.0, (units, units))
        matrix = np.where(mask, values, 0.0)
        return matrix.T if self.connections == "incoming" else matrix

    def __call__(self, shape, dtype=None):
        units = _square_size(shape, "SparseSpectral")
        dtype = keras.backend.standardize_dtype(dtype or keras.backend.floatx())
        return _rescaled(self.sparse_matrix(units), self.spectral_radius, dtype,
                         "SparseSpectral")

    def get_config(self):
        return {
            "nonzeros": self.nonzeros,
            "spectral_radius": self.spectral_radius,
            "distribution": self.distribution,
            "connections": self.connections,
            "seed": self._init_seed,
        }
