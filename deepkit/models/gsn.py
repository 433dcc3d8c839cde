"""Denoising auto-encoders and generative stochastic networks trained by walkback.

A denoising auto-encoder (DAE) estimates ``P(x | x̃)``, the clean input given
a corrupted one; alternating corruption and sampling from it is a Markov
chain whose stationary distribution estimates the data distribution
(Bengio, Yao, Alain, Vincent 2013). Walkback training (their Algorithm 1)
runs that chain from the corrupted training example for several steps and
asks every step to reconstruct the clean example. A GSN (Bengio,
Thibodeau-Laufer, Alain, Yosinski 2014) makes the chain's state a deep
network, ``(x, h1, h2, ...)``, updated odd layers first, then even layers.

Both models here share one chain, written after the authors' code
(`yaoli/GSN`, `model.py`). One step, from the visible state ``x̃`` (the
corrupted input, then each step's corrupted sample):

1. the hidden layers are updated from ``x̃`` and their previous state (the
   DAE: one layer, ``h = f(x̃ W + b)``; the GSN: odd layers, then even
   layers, each from both neighbours);
2. the visible mean is ``p(x | h) = sigmoid(h1 W0ᵀ + b0)`` (the DAE's
   decoder may be untied);
3. the next visible state is ``C(x̃' | x')`` with ``x' ~ Bernoulli(p)``
   (``sample_visible=True``) or ``x' = p``: the input corruption applied
   again.

The state starts from ``x̃ = C(x̃ | x)`` and hidden layers at zero. The
training loss (`compute_loss`) is Σ over the ``walkback_steps`` steps of the
mean binary cross-entropy between ``p`` and the clean ``x``, as in the
authors' ``COST``; it runs inside ordinary `fit`, which needs only ``x``.

Noise and modes. In training every corruption, the visible sampling and the
GSN's hidden noise are on, each drawn from its own layer's seed generator
(`deepkit.layers.corruption`); in inference (`predict`, a plain call) all
are off, and the chain is deterministic: ``call`` then gives the noiseless
reconstructions. The sampling methods (`sample`, `inpaint`, `run_chain`)
turn all noise on and draw every variate, in a fixed order, from one
`keras.random.SeedGenerator` made from their ``seed`` argument, so that a
chain depends on the seed and the weights alone (and is the same on a model
loaded from a ``.keras`` file). The sampling chain runs eagerly, one step at
a time (measured here: 6-9 ms a step for the paper's 784-1500-1500 network,
one chain, on a shared 2-core CPU, JAX and TensorFlow).

Controlling the noise. ``corruption=SaltAndPepper(0.0)``,
``hidden_noise_stddev=0`` and ``sample_visible=False`` make training
deterministic. To check a noisy step against a reference, save the states of
the seed generators of ``model.corruption``, ``model.visible_sampler`` and
``model.hidden_noise`` (GSN), run the step, restore them, and draw the same
variates with each layer's `draw_noise`: per training call, the corruption
draws ``[batch, visible]`` for the input and then once per step; the sampler
once per step; the hidden noise, per step, a pre- and a post-activation
``[batch, units]`` for each noisy hidden layer in update order (odd, then
even). `tests/models/test_gsn.py` does this against numpy.

Differences from `yaoli/GSN`: the cross-entropy clips ``p`` to
``[1e-7, 1 − 1e-7]`` as Keras' losses do (the authors' Theano graph had no
clipping); one uniform variate per element drives salt-and-pepper (the
authors drew two binomials; the distribution is the same).
"""

import keras
import numpy as np
from keras import ops

from deepkit.export import export
from deepkit.layers.corruption import (
    BinomialSample,
    Corruption,
    GaussianCorruption,
    SaltAndPepper,
)

_EPSILON = 1e-7
_DERIVATIVES = {
    "sigmoid": lambda pre, h: h * (1.0 - h),
    "tanh": lambda pre, h: 1.0 - ops.square(h),
    "linear": lambda pre, h: ops.ones_like(pre),
    "relu": lambda pre, h: ops.cast(ops.greater(pre, 0), pre.dtype),
}


def reconstruction_cross_entropy(target, probabilities, sample_weight=None):
    """Σ over walkback steps of the mean binary cross-entropy to ``target``.

    ``-(x log p + (1 − x) log(1 − p))`` with ``p`` clipped to
    ``[1e-7, 1 − 1e-7]`` (as Keras' `binary_crossentropy`), averaged over
    the visible units and the batch, summed over steps.

    Args:
        target: the clean inputs ``x``, ``[batch, visible]``, in [0, 1].
        probabilities: each step's ``p(x | h)``, ``[batch, steps, visible]``.
        sample_weight: optional ``[batch]`` weights (the weighted sum is
            divided by the batch size, as Keras' losses do).

    Returns:
        A scalar.
    """
    probabilities = ops.clip(probabilities, _EPSILON, 1.0 - _EPSILON)
    target = ops.expand_dims(ops.cast(target, probabilities.dtype), 1)
    entropy = -(target * ops.log(probabilities) + (1.0 - target) * ops.log(1.0 - probabilities))
    per_example = ops.sum(ops.mean(entropy, axis=-1), axis=-1)
    if sample_weight is not None:
        weight = ops.reshape(ops.cast(sample_weight, per_example.dtype), (-1,))
        per_example = per_example * weight
    return ops.mean(per_example)


def contractive_penalty(inputs, kernel, bias, activation="sigmoid"):
    """``‖J‖²_F``, the squared Frobenius norm of the encoder's Jacobian.

    For ``h = f(x W + b)``, ``J_ji = ∂h_j / ∂x_i = f'(a_j) W_ij``, so
    ``‖J‖²_F = Σ_j f'(a_j)² Σ_i W_ij²`` (Rifai et al. 2011, Eq. 2 and the
    closed form of their Section 4 for sigmoid units), averaged over the
    batch.

    Args:
        inputs: ``[batch, visible]``.
        kernel: ``W``, ``[visible, hidden]``.
        bias: ``b``, ``[hidden]``.
        activation: ``"sigmoid"``, ``"tanh"``, ``"relu"`` or ``"linear"``.

    Returns:
        A scalar.
    """
    if activation not in _DERIVATIVES:
        raise ValueError(
            f"contractive_penalty needs one of {sorted(_DERIVATIVES)}, got {activation!r}"
        )
    pre = ops.matmul(inputs, kernel) + bias
    slope = _DERIVATIVES[activation](pre, keras.activations.get(activation)(pre))
    column_norms = ops.sum(ops.square(kernel), axis=0)
    return ops.mean(ops.sum(ops.square(slope) * column_norms, axis=-1))


def _offset(seed, offset):
    return None if seed is None else seed + offset


def _plain(value):
    """Plain dicts and lists, without Keras' ``shared_object_id`` entries."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _corruption_layer(corruption, seed):
    if corruption is None:
        return SaltAndPepper(0.4, seed=seed, name="corruption")
    if isinstance(corruption, dict):
        corruption = keras.saving.deserialize_keras_object(_plain(corruption))
    if not isinstance(corruption, Corruption):
        raise ValueError(
            "corruption must be a deepkit.layers corruption (SaltAndPepper, "
            "MaskingCorruption, GaussianCorruption, ...) or its serialized dict, got "
            f"{corruption!r}"
        )
    return corruption


class _WalkbackChain(keras.Model):
    """The chain, loss and sampling methods shared by the DAE and the GSN.

    Subclasses build the weights and define `_hidden_sizes`,
    `_chain_weights`, `_update_hiddens` and `_visible_logits`, and
    `_noisy_hidden_layers` when their hidden layers take noise.

    A chain step is a deterministic function of its state and of that step's
    variates (`_draw_noise`), which the training call draws from the
    layers' own generators one step at a time and the sampling methods draw
    from their seed in blocks of steps.
    """

    # A sampling chain draws its variates for a block of at most _BLOCK_STEPS
    # steps and _BLOCK_VARIATES numbers at once.
    _BLOCK_STEPS = 256
    _BLOCK_VARIATES = 2**22

    def __init__(self, walkback_steps, corruption, sample_visible, seed, **kwargs):
        super().__init__(**kwargs)
        if int(walkback_steps) < 1:
            raise ValueError(f"walkback_steps must be >= 1, got {walkback_steps}")
        self.walkback_steps = int(walkback_steps)
        self.sample_visible = bool(sample_visible)
        self.seed = seed
        self.corruption = _corruption_layer(corruption, seed)
        self.visible_sampler = BinomialSample(seed=_offset(seed, 1), name="visible_sampler")

    # -- the chain ---------------------------------------------------------

    def _noisy_hidden_layers(self):
        """The 1-based indices of the hidden layers that take hidden noise."""
        return ()

    def _draw_noise(self, batch_size, leading=(), seed=None):
        """The variates of one chain step (of ``leading`` steps at once).

        A dict: ``"hidden"``, ``{i: (pre, post)}`` for each noisy hidden
        layer ``i`` in update order; ``"sample"``, the uniforms of the
        visible sample (None without ``sample_visible``); ``"corruption"``,
        those of the input corruption. Drawn in that order, from ``seed`` or
        from each layer's own generator.
        """
        dtype = self.compute_dtype
        leading = tuple(leading)
        sizes = self._hidden_sizes()
        hidden = {}
        for i in self._noisy_hidden_layers():
            shape = leading + (batch_size, sizes[i - 1])
            hidden[i] = (
                self.hidden_noise.draw_noise(shape, dtype, seed),
                self.hidden_noise.draw_noise(shape, dtype, seed),
            )
        visible_shape = leading + (batch_size, self._visible_size)
        sample = (
            self.visible_sampler.draw_noise(visible_shape, dtype, seed)
            if self.sample_visible
            else None
        )
        return {
            "hidden": hidden,
            "sample": sample,
            "corruption": self.corruption.draw_noise(visible_shape, dtype, seed),
        }

    def initial_hiddens(self, batch_size):
        """The hidden state the chain starts from: zeros, one per layer."""
        return [
            ops.zeros((batch_size, units), self.compute_dtype) for units in self._hidden_sizes()
        ]

    def _next_visible(self, mean, noise):
        if noise is None:
            return mean
        visible = mean
        if self.sample_visible:
            visible = self.visible_sampler.apply_noise(visible, noise["sample"])
        return self.corruption.apply_noise(visible, noise["corruption"])

    def _walk(self, visible, hiddens, steps, noise_of_step, clamp=None, keep_states=False):
        """``steps`` chain steps from ``(visible, hiddens)``.

        ``noise_of_step(t)`` gives step ``t``'s variates, or None for a step
        without noise. Returns each step's ``p(x | h)``, each step's hidden
        state (with ``keep_states``; else an empty list) and the last
        visible state.
        """
        weights = self._chain_weights()
        probabilities, states = [], []
        for step in range(steps):
            noise = noise_of_step(step)
            hiddens = self._update_hiddens(weights, visible, hiddens, noise)
            mean = ops.sigmoid(self._visible_logits(weights, hiddens))
            if clamp is not None:
                mean = ops.where(clamp[0], clamp[1], mean)
            probabilities.append(mean)
            if keep_states:
                states.append(hiddens)
            visible = self._next_visible(mean, noise)
            if clamp is not None:
                visible = ops.where(clamp[0], clamp[1], visible)
        return probabilities, states, visible

    def visible_logits(self, hiddens):
        """The pre-sigmoid of ``p(x | h)`` for the hidden state ``hiddens``.

        Args:
            hiddens: a list with one ``[batch, units]`` tensor per hidden
                layer, as `run_chain` returns them for one step.

        Returns:
            ``[batch, visible]``.
        """
        return self._visible_logits(self._chain_weights(), list(hiddens))

    def call(self, inputs, training=None):
        x = ops.cast(inputs, self.compute_dtype)
        batch_size = ops.shape(x)[0]
        noisy = bool(training)
        visible = self.corruption.corrupted(x) if noisy else x

        def noise_of_step(step):
            return self._draw_noise(batch_size) if noisy else None

        probabilities, _, _ = self._walk(
            visible, self.initial_hiddens(batch_size), self.walkback_steps, noise_of_step
        )
        self._add_penalties(x)
        return ops.stack(probabilities, axis=1)

    def _add_penalties(self, x):
        pass

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The walkback loss: Σ over steps of the mean cross-entropy to the clean input.

        The target is ``x`` (or ``y`` when `fit` is given one, e.g. clean
        images for corrupted inputs), plus the model's added losses (the
        DAE's contractive penalty). Compile the model without a ``loss``.
        """
        if self.loss is not None:
            raise ValueError(
                f"{type(self).__name__} defines its own loss (the walkback "
                "reconstruction cross-entropy); compile it without `loss`"
            )
        target = x if y is None else y
        loss = reconstruction_cross_entropy(target, y_pred, sample_weight)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return loss

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.walkback_steps, input_shape[-1])

    # -- sampling ----------------------------------------------------------

    def _visible_dim(self):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} is not built: call it on data, fit it or "
                "build it with `model.build((None, visible))` before sampling"
            )
        return self._visible_size

    def _block_steps(self, batch_size):
        per_step = self._visible_size * 2 + sum(
            2 * self._hidden_sizes()[i - 1] for i in self._noisy_hidden_layers()
        )
        return max(1, min(self._BLOCK_STEPS, self._BLOCK_VARIATES // (per_step * batch_size)))

    def run_chain(self, initial, steps, seed, mask=None, return_hiddens=True):
        """Run the sampling chain from ``initial``, all noise on.

        The initial state is corrupted by the input corruption, the hidden
        layers start at zero, and each of the ``steps`` steps is the one of
        the module docstring. With a ``mask``, the known elements (mask
        nonzero) are reset to ``initial``'s values after every corruption
        and in every returned mean (Bengio et al. 2014, Section 4,
        inpainting). Every variate comes from one generator made from
        ``seed``: first the initial corruption, then the steps' variates in
        blocks of steps whose size depends on the batch and layer sizes
        only, so a longer chain begins with the steps of a shorter one.

        Args:
            initial: the starting visible state, ``[batch, visible]``.
            steps: the number of chain steps.
            seed: an int (or a `keras.random.SeedGenerator`) from which every
                variate of the chain is drawn; None for a random chain.
            mask: optional ``[batch, visible]`` (or ``[visible]``), nonzero
                where the element is known and clamped.
            return_hiddens: keep every step's hidden state (False saves
                their memory; ``"hiddens"`` is then None).

        Returns:
            A dict of numpy arrays: ``"probabilities"``, each step's mean
            ``p(x | h)``, ``[batch, steps, visible]``; ``"hiddens"``, a list
            with one ``[batch, steps, units]`` array per hidden layer, the
            hidden state that gave each step's mean (that mean is
            ``sigmoid(visible_logits(h))``: the conservative sampling-based
            likelihood estimator of Bengio, Yao, Cho 2013 needs these
            states); ``"visible"``, the chain's last visible state.
        """
        dim = self._visible_dim()
        generator = seed if isinstance(seed, keras.random.SeedGenerator) else (
            keras.random.SeedGenerator(seed))
        initial = np.asarray(keras.ops.convert_to_numpy(initial), dtype=self.compute_dtype)
        if initial.ndim != 2 or initial.shape[1] != dim:
            raise ValueError(f"initial must be [batch, {dim}], got shape {initial.shape}")
        batch_size = initial.shape[0]
        initial = ops.convert_to_tensor(initial)
        clamp = None
        if mask is not None:
            known = np.broadcast_to(np.asarray(keras.ops.convert_to_numpy(mask)) != 0,
                                    tuple(initial.shape))
            clamp = (ops.convert_to_tensor(known), initial)
        visible = self.corruption.corrupted(initial, generator)
        if clamp is not None:
            visible = ops.where(clamp[0], clamp[1], visible)
        block = self._block_steps(batch_size)
        drawn = {}

        def noise_of_step(step):
            start = step - step % block
            if drawn.get("start") != start:
                drawn["start"] = start
                drawn["noise"] = self._draw_noise(batch_size, (block,), generator)
            return _at(drawn["noise"], step - start)

        probabilities, states, visible = self._walk(
            visible, self.initial_hiddens(batch_size), int(steps), noise_of_step, clamp,
            keep_states=return_hiddens,
        )

        def stacked(tensors, width):
            if not tensors:
                return np.zeros((batch_size, 0, width), self.compute_dtype)
            return np.stack([ops.convert_to_numpy(t) for t in tensors], axis=1)

        return {
            "probabilities": stacked(probabilities, dim),
            "hiddens": [
                stacked([state[i] for state in states], units)
                for i, units in enumerate(self._hidden_sizes())
            ] if return_hiddens else None,
            "visible": ops.convert_to_numpy(visible),
        }

    def sample(self, num_samples, steps, seed, initial=None):
        """Samples from ``num_samples`` independent chains of ``steps`` steps.

        Args:
            num_samples: the number of chains.
            steps: the number of chain steps.
            seed: an int; the same seed, weights and arguments give the same
                samples. None for random ones.
            initial: the starting visible state, ``[num_samples, visible]``
                or one ``[visible]`` vector for every chain (the authors start
                from a test digit); None for uniform noise in [0, 1) drawn
                from the seed. It is corrupted before the first step.

        Returns:
            A numpy array ``[num_samples, steps, visible]``: each step's mean
            ``p(x | h)`` (the authors' ``visible_chain`` without its initial
            state), the numbers Bengio et al. 2014 feed to the Parzen
            estimator.
        """
        dim = self._visible_dim()
        generator = keras.random.SeedGenerator(seed)
        if initial is None:
            initial = keras.random.uniform((num_samples, dim), dtype=self.compute_dtype,
                                           seed=generator)
        else:
            initial = np.asarray(keras.ops.convert_to_numpy(initial), self.compute_dtype)
            initial = np.broadcast_to(initial.reshape(-1, dim), (num_samples, dim))
        return self.run_chain(initial, steps, generator, return_hiddens=False)["probabilities"]

    def inpaint(self, x, mask, steps, seed):
        """Fill in the unknown elements of ``x`` by running the clamped chain.

        The unknown elements (mask 0) start as uniform noise in [0, 1) drawn
        from the seed; the known ones (mask nonzero) keep ``x``'s values
        throughout (Bengio et al. 2014, Figure 3; ``inpainting`` in
        `yaoli/GSN`).

        Args:
            x: ``[batch, visible]``; only the known elements are read.
            mask: ``[batch, visible]`` or ``[visible]``, nonzero where known.
            steps: the number of chain steps.
            seed: an int; the same seed gives the same result.

        Returns:
            A numpy array ``[batch, steps, visible]``: each step's mean
            ``p(x | h)``, equal to ``x`` at the known elements.
        """
        x = np.asarray(keras.ops.convert_to_numpy(x), self.compute_dtype)
        known = np.broadcast_to(np.asarray(keras.ops.convert_to_numpy(mask)) != 0, x.shape)
        generator = keras.random.SeedGenerator(seed)
        noise = keras.random.uniform(x.shape, dtype=self.compute_dtype, seed=generator)
        initial = np.where(known, x, ops.convert_to_numpy(noise))
        chain = self.run_chain(initial, steps, generator, mask=known, return_hiddens=False)
        return chain["probabilities"]

    def _serialized_corruption(self):
        config = _plain(keras.saving.serialize_keras_object(self.corruption))
        config.pop("build_config", None)
        return config


def _at(noise, index):
    """Step ``index`` of a block of variates."""
    return {
        "hidden": {i: (pre[index], post[index]) for i, (pre, post) in noise["hidden"].items()},
        "sample": None if noise["sample"] is None else noise["sample"][index],
        "corruption": noise["corruption"][index],
    }


@export
class DenoisingAutoencoder(_WalkbackChain):
    """A denoising auto-encoder with sigmoid visible units, trained by walkback.

    ``h = f(x̃ W + b_h)``, ``p(x | x̃) = sigmoid(h W' + b_x)`` with
    ``W' = Wᵀ`` (tied) or its own weights, and ``x̃`` the corrupted input.
    With ``walkback_steps`` > 1 training follows Bengio et al. 2013,
    Algorithm 1: the reconstruction is sampled, corrupted again and
    reconstructed, and each of the steps is trained to give back the clean
    ``x`` (the chain of the module docstring with one hidden layer and no
    hidden noise; `yaoli/GSN`'s ``run_dae_walkback.py``). An optional
    contractive penalty ``contractive_weight · ‖∂h/∂x‖²_F`` at the clean
    input (Rifai et al. 2011) is added to the loss.

    Args:
        units: the number of hidden units (2000 in the authors' MNIST DAE).
        activation: the hidden activation, a Keras activation name
            (``"sigmoid"``; the contractive penalty needs ``"sigmoid"``,
            ``"tanh"``, ``"relu"`` or ``"linear"``).
        tied_weights: decode with the transposed encoder weights (True) or
            with a separate matrix.
        corruption: a `deepkit.layers` corruption (or its serialized dict);
            None for ``SaltAndPepper(0.4, seed=seed)``. Pass a zero rate for
            no corruption.
        walkback_steps: chain steps per training example (1 is the plain
            DAE; the authors' walkback DAE uses 5).
        contractive_weight: weight of the contractive penalty; 0 turns it
            off.
        sample_visible: sample the visible units from ``p(x | x̃)`` before
            corrupting them again in the chain (the authors'
            ``input_sampling``).
        seed: seed for the initial weights and the noise.
        **kwargs: base `Model` arguments.

    Call arguments:
        inputs: ``[batch, visible]`` in [0, 1].
        training: corrupt and sample (True) or run the chain without noise.

    Returns:
        ``[batch, walkback_steps, visible]``: each step's ``p(x | x̃)``;
        ``[:, 0]`` is the reconstruction of the (corrupted) input.

    Example:

    ```python
    dae = DenoisingAutoencoder(2000, walkback_steps=5, seed=1)
    dae.compile(keras.optimizers.SGD(10.0))
    dae.fit(binary_images, epochs=500, batch_size=100)   # x only
    samples = dae.sample(num_samples=1, steps=10000, seed=0, initial=test_images[0])
    ```

    Reference:
        Bengio, Yao, Alain, Vincent 2013, "Generalized Denoising
        Auto-Encoders as Generative Models", arXiv:1305.6663; Rifai, Vincent,
        Muller, Glorot, Bengio 2011, "Contractive Auto-Encoders: Explicit
        Invariance During Feature Extraction", ICML 2011.
    """

    def __init__(
        self,
        units=2000,
        activation="sigmoid",
        tied_weights=True,
        corruption=None,
        walkback_steps=1,
        contractive_weight=0.0,
        sample_visible=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(walkback_steps, corruption, sample_visible, seed, **kwargs)
        if int(units) < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        if contractive_weight < 0:
            raise ValueError(f"contractive_weight must be >= 0, got {contractive_weight}")
        if contractive_weight > 0 and activation not in _DERIVATIVES:
            raise ValueError(
                f"the contractive penalty needs activation in {sorted(_DERIVATIVES)}, "
                f"got {activation!r}"
            )
        self.units = int(units)
        self.activation = activation
        self._activation = keras.activations.get(activation)
        self.tied_weights = bool(tied_weights)
        self.contractive_weight = float(contractive_weight)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"DenoisingAutoencoder takes [batch, visible], got {input_shape}")
        dim = int(input_shape[-1])
        self._visible_size = dim
        self.kernel = self.add_weight(
            shape=(dim, self.units),
            initializer=keras.initializers.GlorotUniform(_offset(self.seed, 10)),
            name="kernel",
        )
        self.hidden_bias = self.add_weight(shape=(self.units,), initializer="zeros",
                                           name="hidden_bias")
        self.decoder_kernel = None
        if not self.tied_weights:
            self.decoder_kernel = self.add_weight(
                shape=(self.units, dim),
                initializer=keras.initializers.GlorotUniform(_offset(self.seed, 11)),
                name="decoder_kernel",
            )
        self.visible_bias = self.add_weight(shape=(dim,), initializer="zeros",
                                            name="visible_bias")
        self.built = True

    def _hidden_sizes(self):
        return (self.units,)

    def _chain_weights(self):
        decoder = ops.transpose(self.kernel) if self.tied_weights else self.decoder_kernel
        return {"encoder": self.kernel, "decoder": decoder}

    def _update_hiddens(self, weights, visible, hiddens, noise):
        # The encoder [f(x̃ W + b_h)]; the previous hidden state is not used.
        return [self._activation(ops.matmul(visible, weights["encoder"]) + self.hidden_bias)]

    def _visible_logits(self, weights, hiddens):
        # h W' + b_x
        return ops.matmul(hiddens[0], weights["decoder"]) + self.visible_bias

    def _add_penalties(self, x):
        if self.contractive_weight > 0:
            self.add_loss(
                self.contractive_weight
                * contractive_penalty(x, self.kernel, self.hidden_bias, self.activation)
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": self.activation,
                "tied_weights": self.tied_weights,
                "corruption": self._serialized_corruption(),
                "walkback_steps": self.walkback_steps,
                "contractive_weight": self.contractive_weight,
                "sample_visible": self.sample_visible,
                "seed": self.seed,
            }
        )
        return config


@export
class GSN(_WalkbackChain):
    """A deep generative stochastic network trained by walkback.

    The chain's state is ``(x, h1, ..., hK)``; each step updates the odd
    hidden layers, then the even ones, each from its neighbours with tied
    weights (Bengio et al. 2014, Figure 2 and Section 3.4):
    ``h_i = η(f(η(h_{i−1} W_{i−1} + h_{i+1} W_iᵀ + b_i)))``, with ``η`` the
    Gaussian hidden noise (none on ``h1`` when ``noiseless_first_hidden``,
    as in the authors' runs) and ``h_{K+1} = 0``; then the visible mean
    ``p(x | h1) = sigmoid(h1 W0ᵀ + b0)``, a Bernoulli sample of it
    (``sample_visible``) and the input corruption give the next visible
    state. ``h_0`` is the visible state: the corrupted input, then the
    corrupted samples. Weights start uniform in ``±sqrt(6 / (fan_in +
    fan_out))``, biases at zero. Training runs ``walkback_steps`` steps
    from the corrupted input with hidden layers at zero and sums, over the
    steps, the mean binary cross-entropy of ``p`` against the clean input
    (`compute_loss`; ``fit(x)`` needs no targets).

    Args:
        hidden_units: the widths of the hidden layers ``h1 ... hK``
            (``(1500, 1500)`` in the paper's MNIST GSN).
        walkback_steps: chain steps per training example, one
            reconstruction each (4).
        activation: the hidden activation, a Keras activation name
            (``"tanh"``).
        corruption: the input corruption, a `deepkit.layers` corruption (or
            its serialized dict); None for ``SaltAndPepper(0.4, seed=seed)``.
        hidden_noise_stddev: σ of the Gaussian noise added before and after
            each hidden activation (2.0); 0 turns it off.
        noiseless_first_hidden: no hidden noise on ``h1`` (the authors'
            ``noiseless_h1``, on in their runs).
        sample_visible: sample the visible units from ``p(x | h1)`` at every
            step before corrupting them (the authors' ``input_sampling``).
        seed: seed for the initial weights and the noise.
        **kwargs: base `Model` arguments.

    Call arguments:
        inputs: ``[batch, visible]`` in [0, 1].
        training: all noise on (True) or the chain without noise.

    Returns:
        ``[batch, walkback_steps, visible]``: each step's mean ``p(x | h1)``.

    Example:

    ```python
    gsn = GSN(hidden_units=(1500, 1500), walkback_steps=4, seed=1)
    gsn.compile(keras.optimizers.SGD(0.25, momentum=0.5))
    gsn.fit(images, epochs=1000, batch_size=100)        # x only, in [0, 1]
    chain = gsn.sample(num_samples=1, steps=10000, seed=0, initial=test_images[0])
    filled = gsn.inpaint(test_images[:10], mask=left_half_known, steps=50, seed=0)
    ```

    Reference:
        Bengio, Thibodeau-Laufer, Alain, Yosinski 2014, "Deep Generative
        Stochastic Networks Trainable by Backprop", ICML 2014,
        arXiv:1306.1091 (code: `yaoli/GSN`).
    """

    def __init__(
        self,
        hidden_units=(1500, 1500),
        walkback_steps=4,
        activation="tanh",
        corruption=None,
        hidden_noise_stddev=2.0,
        noiseless_first_hidden=True,
        sample_visible=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(walkback_steps, corruption, sample_visible, seed, **kwargs)
        hidden_units = tuple(int(u) for u in hidden_units)
        if not hidden_units or min(hidden_units) < 1:
            raise ValueError(f"hidden_units must be positive widths, got {hidden_units}")
        if hidden_noise_stddev < 0:
            raise ValueError(f"hidden_noise_stddev must be >= 0, got {hidden_noise_stddev}")
        self.hidden_units = hidden_units
        self.activation = activation
        self._activation = keras.activations.get(activation)
        self.hidden_noise_stddev = float(hidden_noise_stddev)
        self.noiseless_first_hidden = bool(noiseless_first_hidden)
        self.hidden_noise = GaussianCorruption(
            self.hidden_noise_stddev, seed=_offset(seed, 2), name="hidden_noise"
        )

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"GSN takes [batch, visible], got {input_shape}")
        sizes = (int(input_shape[-1]),) + self.hidden_units
        self._visible_size = sizes[0]
        self.kernels = [
            self.add_weight(
                shape=(sizes[i], sizes[i + 1]),
                initializer=keras.initializers.GlorotUniform(_offset(self.seed, 10 + i)),
                name=f"kernel_{i}",
            )
            for i in range(len(self.hidden_units))
        ]
        self.biases = [
            self.add_weight(shape=(size,), initializer="zeros", name=f"bias_{i}")
            for i, size in enumerate(sizes)
        ]
        self.built = True

    def _hidden_sizes(self):
        return self.hidden_units

    def _noisy_hidden_layers(self):
        if self.hidden_noise_stddev == 0:
            return ()
        first = 2 if self.noiseless_first_hidden else 1
        return tuple(i for i in _update_order(len(self.hidden_units)) if i >= first)

    def _chain_weights(self):
        return {
            "up": list(self.kernels),
            "down": [ops.transpose(kernel) for kernel in self.kernels],
        }

    def _update_hiddens(self, weights, visible, hiddens, noise):
        # update_layers of yaoli/GSN without the visible layer: the odd
        # hidden layers, then the even ones, each from both neighbours.
        layers = [visible] + list(hiddens)
        depth = len(self.hidden_units)
        for i in _update_order(depth):
            pre = ops.matmul(layers[i - 1], weights["up"][i - 1]) + self.biases[i]
            if i < depth:
                pre = pre + ops.matmul(layers[i + 1], weights["down"][i])
            pair = None if noise is None else noise["hidden"].get(i)
            if pair is not None:
                pre = self.hidden_noise.apply_noise(pre, pair[0])
            hidden = self._activation(pre)
            if pair is not None:
                hidden = self.hidden_noise.apply_noise(hidden, pair[1])
            layers[i] = hidden
        return layers[1:]

    def _visible_logits(self, weights, hiddens):
        # h1 W0ᵀ + b0
        return ops.matmul(hiddens[0], weights["down"][0]) + self.biases[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_units": list(self.hidden_units),
                "walkback_steps": self.walkback_steps,
                "activation": self.activation,
                "corruption": self._serialized_corruption(),
                "hidden_noise_stddev": self.hidden_noise_stddev,
                "noiseless_first_hidden": self.noiseless_first_hidden,
                "sample_visible": self.sample_visible,
                "seed": self.seed,
            }
        )
        return config


def _update_order(depth):
    """The hidden layers ``1..depth`` in a GSN step's order: odd, then even."""
    return list(range(1, depth + 1, 2)) + list(range(2, depth + 1, 2))
