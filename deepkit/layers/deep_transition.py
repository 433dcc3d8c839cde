"""Deep-transition recurrent cells: DT-RNN, DT(S)-RNN, leaky integration.

A conventional RNN computes its next state with one affine map and one
nonlinearity. Pascanu et al. (2014) make that hidden-to-hidden transition a
multilayer perceptron (DT-RNN), optionally with a shortcut from the previous
state to the last layer (DT(S)-RNN). Deep input and deep output (DOT-RNN)
need no class of their own: they are ordinary `Dense` layers applied to the
sequence before and after `DeepTransitionRNN`.

Notation (the paper's, with Keras' row-vector convention `x @ W`):

    z_1 = φ_1(h_{t-1} W_1 + x_t U + b_1)                    first layer
    z_l = φ_l(z_{l-1} W_l + b_l),          l = 2 .. L-1     intermediate layers
    h̃_t = φ_h(z_{L-1} W_L [+ h_{t-1} W_s] + b_L)            last layer [DT(S)]
    h_t = a ⊙ h_{t-1} + (1 - a) ⊙ h̃_t                       leaky integration

With no intermediate layers (L = 1) the cell is the conventional RNN,
h_t = φ_h(h_{t-1} W + x_t U + b).

Why `DeepTransitionRNN` sets the cell's mode instead of passing it (Keras
3.15): around Keras' time loop it puts the cell in two modes, through the
context managers `DeepTransitionCell.inputs_projected` (`call` takes
x_t U + b_1, projected for all t before the loop, instead of x_t) and
`DeepTransitionCell.noisy_weights` (`call` uses the one noise sample drawn
for the whole sequence). Passing either as an argument of the cell's `call`
is not possible through `keras.layers.RNN`: its `inner_loop`
(keras/src/layers/rnn/rnn.py) builds the step's keyword arguments as
``cell_kwargs = {"training": training}`` only (when the cell's `call` has a
``training`` argument) and its step calls
``self.cell(inputs, states, **cell_kwargs)``; `RNN.call` takes no
``constants`` (which the class docstring still mentions) nor any other
argument to forward; and the loop that `inner_loop` runs,
``keras.src.backend.rnn``, is not public API (not in `keras.ops` or
`keras.backend`), so a step with more arguments would need a private Keras
function or a loop rewritten on `keras.ops.scan`, masking, ``go_backwards``
and ``unroll`` included, which need not give the same numbers. The modes
are set only inside `DeepTransitionRNN.inner_loop` and reset when it
returns, even on an error.
"""

import contextlib
import re

import keras
from keras import ops

from deepkit import _keras_internals
from deepkit.export import export
from deepkit.layers.weight_noise import check_weight_noise, with_weight_noise

_LEAKY_LEARNED = "learned"

# Select Graphic Rendition escapes (bold, reset, colours): `\x1b[1m`, `\x1b[0m`.
_ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")


class PlainValueError(ValueError):
    """A `ValueError` whose message is plain text, also once Keras rewrites it.

    When an error leaves a layer's `call`, Keras (with traceback filtering,
    the default) raises a new error of the same class whose message wraps the
    original one as ``"Exception encountered when calling ...\n\n\x1b[1m"
    + message + "\x1b[0m ..."``: a bold ANSI escape that a log file or a
    test shows raw. This class drops such escapes from any message it is
    built with, and Keras adds its context to the innermost call only, so
    the error that reaches the user reads as plain text.

    Args:
        message: the error message; ANSI SGR escapes in it are removed.
    """

    def __init__(self, message=""):
        super().__init__(_ANSI_SGR.sub("", str(message)))


@export
class DeepTransitionCell(keras.layers.Layer):
    """One step of a recurrent network whose transition is an MLP.

    The hidden-to-hidden transition of Pascanu et al.'s DT-RNN: the previous
    state and the input enter the first layer of a multilayer perceptron whose
    last layer is the new state (Sec. 3 of the paper, "Deep Transition RNN"):

        h_t = φ_h(W_L^T φ_{L-1}(… φ_1(W_1^T h_{t-1} + U^T x_t + b_1) …) + b_L).

    `shortcut=True` gives the DT(S)-RNN: the previous state also feeds the last
    layer directly through its own matrix W_s, so that the gradient has a
    path of one nonlinearity per time step. (The authors' code,
    `RecurrentMultiLayerShortPath` in GroundHog, feeds h_{t-1} to every layer
    above the first; with the paper's single intermediate layer the two are
    the same.) `leaky` adds leaky integration (Bengio, Boulanger-Lewandowski,
    Pascanu 2013): h_t = a ⊙ h_{t-1} + (1 − a) ⊙ h̃_t, with `a` fixed or
    learned per unit as a = sigmoid(w).

    Args:
        units: size of the state h_t (the output of the last layer).
        transition_layers: widths of the intermediate layers z_1 … z_{L-1} of
            the transition; `[]` gives the conventional RNN.
        activation: φ_h, the nonlinearity of the last layer (the state).
        transition_activation: φ_1 … φ_{L-1}, the nonlinearity of the
            intermediate layers.
        shortcut: add the DT(S) shortcut h_{t-1} W_s into the last layer.
            Needs at least one intermediate layer.
        leaky: None (no leak), a float `a` in [0, 1) shared by all units, or
            `"learned"`: one leak per unit, a = sigmoid(w).
        leak_initializer: initializer of w when `leaky="learned"` (zeros
            give a = 0.5).
        use_bias: whether the layers have biases b_1 … b_L.
        kernel_initializer: initializer of U (input to first layer).
        recurrent_initializer: initializer of the hidden-to-hidden matrices
            W_1 … W_L and W_s.
        bias_initializer: initializer of the biases.
        kernel_regularizer, recurrent_regularizer, bias_regularizer:
            regularizers of the same groups of weights.
        kernel_constraint, recurrent_constraint, bias_constraint:
            constraints of the same groups of weights.
        weight_noise: standard deviation of the Gaussian noise added to U,
            W_1 … W_L and W_s in training, one sample per sequence (the
            paper's music runs: 0.075); needs `DeepTransitionRNN`.
        seed: seed of the weight noise.

    Call arguments:
        inputs: x_t, shape `(batch, features)`.
        states: `[h_{t-1}]`, shape `(batch, units)`.
        training: unused; accepted for the RNN cell contract.

    Returns:
        `(h_t, [h_t])`.

    Example:

    ```python
    cell = DeepTransitionCell(64, transition_layers=[64], shortcut=True)
    rnn = keras.layers.RNN(cell, return_sequences=True)
    y = rnn(np.zeros((2, 10, 8), "float32"))  # (2, 10, 64)
    ```

    Reference:
        Pascanu, Gulcehre, Cho, Bengio, "How to Construct Deep Recurrent
        Neural Networks", ICLR 2014, arXiv:1312.6026.
        Bengio, Boulanger-Lewandowski, Pascanu, "Advances in Optimizing
        Recurrent Networks", ICASSP 2013, arXiv:1212.0901.
    """

    def __init__(
        self,
        units,
        transition_layers=(),
        activation="tanh",
        transition_activation="tanh",
        shortcut=False,
        leaky=None,
        leak_initializer="zeros",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        weight_noise=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        weight_noise = check_weight_noise(weight_noise, "DeepTransitionCell")
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        transition_layers = list(transition_layers or [])
        if not all(isinstance(w, int) and w > 0 for w in transition_layers):
            raise ValueError(
                f"transition_layers must be positive integers, got {transition_layers!r}"
            )
        if shortcut and not transition_layers:
            raise ValueError(
                "shortcut=True (DT(S)-RNN) needs at least one transition layer; "
                "without one the transition is already a single layer"
            )
        if leaky is not None and leaky != _LEAKY_LEARNED:
            if isinstance(leaky, bool) or not isinstance(leaky, (int, float)):
                raise ValueError(
                    f"leaky must be None, a float in [0, 1) or 'learned', got {leaky!r}"
                )
            if not 0.0 <= leaky < 1.0:
                raise ValueError(f"a fixed leak must lie in [0, 1), got {leaky}")
            leaky = float(leaky)
        self.units = units
        self.transition_layers = transition_layers
        self.activation = keras.activations.get(activation)
        self.transition_activation = keras.activations.get(transition_activation)
        self.shortcut = bool(shortcut)
        self.leaky = leaky
        self.leak_initializer = keras.initializers.get(leak_initializer)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(recurrent_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.weight_noise = weight_noise
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if weight_noise else None
        # The noisy weights of the current sequence (see `noisy_weights`).
        self._noisy = None
        self.state_size = units
        self.output_size = units
        # Set by DeepTransitionRNN while it runs the loop on inputs it has
        # already projected (x_t U + b_1 for all t in one matrix product).
        self._inputs_projected = False

    @property
    def widths(self):
        """Widths of the transition's layers: intermediate ones, then units."""
        return self.transition_layers + [self.units]

    def _recurrent_weight(self, name, shape):
        return self.add_weight(
            shape=shape,
            name=name,
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )

    def _bias_weight(self, name, width):
        return self.add_weight(
            shape=(width,),
            name=name,
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def build(self, input_shape):
        widths = self.widths
        # Layer 1: U (input) and W_1 (previous state) feed the first layer.
        self.kernel = self.add_weight(
            shape=(input_shape[-1], widths[0]),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self._recurrent_weight(
            "recurrent_kernel", (self.units, widths[0])
        )
        self.bias = self._bias_weight("bias", widths[0]) if self.use_bias else None
        # Layers 2 … L: W_l, b_l.
        self.transition_kernels = []
        self.transition_biases = []
        for l in range(1, len(widths)):
            self.transition_kernels.append(
                self._recurrent_weight(
                    f"transition_kernel_{l + 1}", (widths[l - 1], widths[l])
                )
            )
            if self.use_bias:
                self.transition_biases.append(
                    self._bias_weight(f"transition_bias_{l + 1}", widths[l])
                )
        # DT(S): W_s, from h_{t-1} into the last layer.
        self.shortcut_kernel = (
            self._recurrent_weight("shortcut_kernel", (self.units, self.units))
            if self.shortcut
            else None
        )
        # Leaky integration, learned: a = sigmoid(w), one w per unit.
        self.leak = (
            self.add_weight(
                shape=(self.units,), name="leak", initializer=self.leak_initializer
            )
            if self.leaky == _LEAKY_LEARNED
            else None
        )

    def project_inputs(self, inputs):
        """x U + b_1: the input's part of the first layer, for any leading shape.

        `DeepTransitionRNN` calls this once on the whole sequence, so that the
        input projection is one large matrix product instead of one per step.
        """
        projected = ops.matmul(inputs, self._weight("kernel"))
        if self.bias is not None:
            projected = ops.add(projected, self.bias)
        return projected

    def transition(self, projected, h_prev):
        """h_t from h_{t-1} and the projected input x_t U + b_1."""
        # First layer: φ_1(h_{t-1} W_1 + x_t U + b_1) (φ_h when L = 1).
        z = ops.add(projected, ops.matmul(h_prev, self._weight("recurrent_kernel")))
        last = len(self.transition_kernels)
        z = self.activation(z) if last == 0 else self.transition_activation(z)
        for l, kernel in enumerate(self._weight("transition_kernels"), start=1):
            # Layer l+1: φ(z_l W_{l+1} + b_{l+1}); the last one is φ_h and,
            # for DT(S), also receives the shortcut h_{t-1} W_s.
            z = ops.matmul(z, kernel)
            if self.use_bias:
                z = ops.add(z, self.transition_biases[l - 1])
            if l == last:
                if self.shortcut_kernel is not None:
                    z = ops.add(z, ops.matmul(h_prev, self._weight("shortcut_kernel")))
                z = self.activation(z)
            else:
                z = self.transition_activation(z)
        # Leaky integration: h_t = a ⊙ h_{t-1} + (1 − a) ⊙ h̃_t.
        if self.leaky is None:
            return z
        a = ops.sigmoid(self.leak) if self.leak is not None else self.leaky
        return ops.add(z, ops.multiply(a, ops.subtract(h_prev, z)))

    def _weight(self, name):
        return self._noisy[name] if self._noisy is not None else getattr(self, name)

    @contextlib.contextmanager
    def noisy_weights(self, training):
        """While active (in training, with `weight_noise`), the matrices carry noise.

        Gaussian noise of standard deviation `weight_noise` is drawn once and
        added to U, W_1 … W_L and W_s (not to the biases or the leak) for the
        whole sequence, as in the weight noise of Graves (2011) that Pascanu
        et al. 2014 train with; the gradient is taken at the noisy weights
        and applied to the clean ones. Outside training this does nothing.
        """
        if not (training and self.weight_noise):
            yield
            return

        def noisy(weight):
            return with_weight_noise(weight, self.weight_noise, self.seed_generator)

        self._noisy = {
            "kernel": noisy(self.kernel),
            "recurrent_kernel": noisy(self.recurrent_kernel),
            "transition_kernels": [noisy(k) for k in self.transition_kernels],
            "shortcut_kernel": (noisy(self.shortcut_kernel)
                                if self.shortcut_kernel is not None else None),
        }
        try:
            yield
        finally:
            self._noisy = None

    def call(self, inputs, states, training=False):
        if training and self.weight_noise and self._noisy is None:
            raise PlainValueError(
                "DeepTransitionCell: weight_noise draws one noise sample per sequence; "
                "use the cell through DeepTransitionRNN (or wrap the RNN call in "
                "`with cell.noisy_weights(training):`)"
            )
        h_prev = states[0] if isinstance(states, (list, tuple)) else states
        if self._inputs_projected:
            projected = inputs
        else:
            projected = self.project_inputs(inputs)
        h = self.transition(projected, h_prev)
        return h, ([h] if isinstance(states, (list, tuple)) else h)

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    @contextlib.contextmanager
    def inputs_projected(self):
        """While active, `call` takes x_t U + b_1 instead of x_t."""
        self._inputs_projected = True
        try:
            yield
        finally:
            self._inputs_projected = False

    def get_config(self):
        config = {
            "units": self.units,
            "transition_layers": list(self.transition_layers),
            "activation": keras.activations.serialize(self.activation),
            "transition_activation": keras.activations.serialize(
                self.transition_activation
            ),
            "shortcut": self.shortcut,
            "leaky": self.leaky,
            "leak_initializer": keras.initializers.serialize(self.leak_initializer),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(
                self.recurrent_initializer
            ),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": keras.regularizers.serialize(
                self.recurrent_regularizer
            ),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": keras.constraints.serialize(
                self.recurrent_constraint
            ),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "weight_noise": self.weight_noise,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}


# The cell arguments that DeepTransitionRNN passes through.
_CELL_ARGS = (
    "weight_noise",
    "seed",
    "units",
    "transition_layers",
    "activation",
    "transition_activation",
    "shortcut",
    "leaky",
    "leak_initializer",
    "use_bias",
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
)


@export
class DeepTransitionRNN(keras.layers.RNN):
    """A deep-transition RNN over a sequence: `keras.layers.RNN` around the cell.

    `DeepTransitionCell` run over time, as `keras.layers.SimpleRNN` runs
    `SimpleRNNCell`, so masking (a masked step keeps the state),
    `return_sequences`, `return_state`, `go_backwards`, `stateful`
    (truncated BPTT: the last state of batch i starts batch i+1) and `unroll`
    behave as for any Keras RNN. The input projection x_t U + b_1 is computed
    for all time steps in one matrix product before the loop; each step then
    costs the hidden-to-hidden products only.

    Args:
        units: size of the state h_t, the layer's output width.
        transition_layers: widths of the intermediate layers z_1 … z_{L-1}
            of the transition; `[]` gives the conventional RNN.
        activation: φ_h, the nonlinearity of the last layer (the state).
        transition_activation: φ_1 … φ_{L-1}, the nonlinearity of the
            intermediate layers.
        shortcut: add the DT(S) shortcut h_{t-1} W_s into the last layer of
            the transition; needs at least one intermediate layer.
        leaky: None (no leak), a float `a` in [0, 1) shared by all units, or
            `"learned"`: one leak per unit, a = sigmoid(w), with
            h_t = a ⊙ h_{t-1} + (1 − a) ⊙ h̃_t.
        leak_initializer: initializer of w when `leaky="learned"` (zeros
            give a = 0.5).
        use_bias: whether the transition's layers have biases b_1 … b_L.
        kernel_initializer: initializer of U, the input-to-first-layer
            matrix.
        recurrent_initializer: initializer of the hidden-to-hidden matrices
            W_1 … W_L and W_s.
        bias_initializer: initializer of the biases.
        kernel_regularizer: regularizer of U.
        recurrent_regularizer: regularizer of W_1 … W_L and W_s.
        bias_regularizer: regularizer of the biases.
        kernel_constraint: constraint of U.
        recurrent_constraint: constraint of W_1 … W_L and W_s.
        bias_constraint: constraint of the biases.
        weight_noise: standard deviation of the Gaussian noise added to U,
            W_1 … W_L and W_s in training (not to the biases or the leak):
            one sample per sequence, drawn before the loop, the gradient
            taken at the noisy weights and applied to the clean ones
            (Graves 2011; the paper's music runs use 0.075). 0 turns it off.
        seed: seed of the weight noise.
        return_sequences: return h_1 … h_T instead of h_T.
        return_state: also return the last state.
        go_backwards: run over the sequence in reverse (and return the
            reversed sequence).
        stateful: keep the last state of each sample as the initial state of
            the same sample in the next batch (needs a fixed batch size;
            `reset_state()` starts again from zeros). The carried state is a
            non-trainable weight of the layer, so that `fit`, `evaluate` and
            `predict` carry it on every backend (Keras' own RNN layers keep
            it untracked, and on JAX they restart every batch from zeros).
        unroll: unroll the loop (short, fixed-length sequences only).
        **kwargs: standard layer keyword arguments (`name`, `dtype`,
            `trainable`, ...); `dtype` and `trainable` also go to the cell.

    Call arguments:
        sequences: shape `(batch, timesteps, features)`.
        initial_state: optional list with the initial state.
        mask: optional boolean `(batch, timesteps)`.
        training: passed to the cell.

    Returns:
        h_T, shape `(batch, units)`, or h_1 … h_T, shape `(batch, timesteps,
        units)`, with `return_sequences`; with `return_state`, the tuple
        `(output, h_T)`.

    Example:

    ```python
    # DOT(S)-RNN for 88-key piano rolls: deep transition with a shortcut,
    # then a deep output (an ordinary Dense layer on the sequence).
    model = keras.Sequential([
        DeepTransitionRNN(400, transition_layers=[400], shortcut=True,
                          activation="sigmoid", transition_activation="sigmoid",
                          return_sequences=True),
        keras.layers.Dense(400, activation="sigmoid"),
        keras.layers.Dense(88),
    ])
    ```

    Reference:
        Pascanu, Gulcehre, Cho, Bengio, "How to Construct Deep Recurrent
        Neural Networks", ICLR 2014, arXiv:1312.6026.
    """

    def __init__(
        self,
        units,
        transition_layers=(),
        activation="tanh",
        transition_activation="tanh",
        shortcut=False,
        leaky=None,
        leak_initializer="zeros",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        weight_noise=0.0,
        seed=None,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        **kwargs,
    ):
        cell = DeepTransitionCell(
            units,
            transition_layers=transition_layers,
            activation=activation,
            transition_activation=transition_activation,
            shortcut=shortcut,
            leaky=leaky,
            leak_initializer=leak_initializer,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            weight_noise=weight_noise,
            seed=seed,
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name="deep_transition_cell",
        )
        _keras_internals.check_rnn_inner_loop()  # the method overridden below
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            **kwargs,
        )
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, sequences_shape, initial_state_shape=None):
        super().build(sequences_shape, initial_state_shape)
        if self.stateful:
            # keras.layers.RNN.build keeps the carried state of a stateful
            # layer in untracked variables. Backends that train by stateless
            # calls (JAX) then drop the state assigned during
            # fit/evaluate/predict, and each batch starts from zeros (Keras
            # 3.15). Assigned to an attribute, the variables are tracked as
            # non-trainable weights: the stateless call returns and carries
            # them. (Tracking ignores variables it already holds.)
            self.states = _keras_internals.rnn_state_variables(self)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        # x_t U + b_1 for every t in one product; the loop does the rest.
        # With weight noise, one noise sample serves the whole sequence.
        with self.cell.noisy_weights(training):
            projected = self.cell.project_inputs(sequences)
            with self.cell.inputs_projected():
                return super().inner_loop(projected, initial_state, mask, training=training)

    def call(self, sequences, initial_state=None, mask=None, training=False):
        return super().call(
            sequences, initial_state=initial_state, mask=mask, training=training
        )

    def get_config(self):
        cell_config = self.cell.get_config()
        config = {name: cell_config[name] for name in _CELL_ARGS}
        base_config = super().get_config()
        del base_config["cell"]
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _cell_property(name):
    return property(
        lambda self: getattr(self.cell, name),
        doc=f"The cell's `{name}` (see `DeepTransitionCell`).",
    )


for _name in _CELL_ARGS:
    setattr(DeepTransitionRNN, _name, _cell_property(_name))
del _name
