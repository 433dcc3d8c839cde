"""Pascanu, Mikolov & Bengio's regularizer against vanishing gradients (Ω).

For a recurrent layer with states h_1 … h_T and a loss E, let δ_k = ∂E/∂h_k
(the whole gradient, through every later step) and J_k = ∂h_k/∂h_{k-1}. The
regularizer of section 3.3 of the paper asks that the error signal keep its
norm as it travels one step back in time:

    Ω = Σ_k ( ‖δ_k J_k‖² / ‖δ_k‖² − 1 )²  /  (number of terms),

as the authors' code (`pascanur/trainingRNNs`, RNN.py) computes it: squared
norms, one term per sequence and step, the terms whose ‖δ_k‖² is below
`bound` (1e-20) left out (the code's "steps in the past" counts the others),
the sum divided by the number of terms kept. The gradient of Ω is taken with
respect to the recurrent matrices only, with δ_k and the activations'
derivatives held constant ("we consider [them] as constants", section 3.3),
and added, times a weight α, to the gradient of the loss before the
optimizer (and any clipping, as in the code) sees it.

`VanishingGradientRegularizer` is a callback: passed to `fit`, it makes that
`fit` train every supported recurrent layer (or the ones named) with the
regularizer and writes ``omega`` (the epoch's mean Ω) and ``omega_weight``
(α) into the logs. It gets δ_k by adding a zero "probe" to each new state
inside the layer's own loop and differentiating the loss with respect to the
probes, the counterpart of the code's gradient with respect to the scan's
state buffer. The functions `vanishing_penalty` and `backproject` are the
same mathematics on tensors, for a user's own training step.

Supported layers: `keras.layers.SimpleRNN` (or `keras.layers.RNN` of a
`SimpleRNNCell`) and `DeepTransitionRNN` (or `keras.layers.RNN` of a
`DeepTransitionCell`), with activations tanh, sigmoid, relu or linear;
backends TensorFlow, JAX and torch.
"""

import functools

import keras
from keras import ops

from deepkit import _distribute, _keras_internals
from deepkit.export import export
from deepkit.layers.deep_transition import DeepTransitionCell, DeepTransitionRNN


_DERIVATIVES = {
    "tanh": lambda h: 1.0 - ops.square(h),
    "sigmoid": lambda h: h * (1.0 - h),
    "relu": lambda h: ops.cast(ops.greater(h, 0.0), h.dtype),
    "linear": lambda h: ops.ones_like(h),
}


def _derivative(activation, output, where):
    """φ'(a) from φ(a), for the activations whose derivative is a function of
    their output."""
    name = getattr(activation, "__name__", repr(activation))
    if name not in _DERIVATIVES:
        raise ValueError(
            f"VanishingGradientRegularizer: {where} has activation {name!r}; the "
            f"regularizer supports {sorted(_DERIVATIVES)}")
    return ops.stop_gradient(_DERIVATIVES[name](output))


def vanishing_penalty(deltas, backprojected, bound=1e-20):
    """Ω from the error signals and their images one step back.

    Args:
        deltas: δ_k = ∂E/∂h_k, shape ``(batch, time, units)``.
        backprojected: δ_k J_k = δ_k ∂h_k/∂h_{k-1}, the same shape.
        bound: terms whose ‖δ_k‖² is below it are left out.

    Returns:
        ``(omega, kept)``: the mean over the terms kept of
        (‖δ_k J_k‖² / ‖δ_k‖² − 1)², and the fraction of terms kept.

    Example:

    ```python
    omega, kept = vanishing_penalty(deltas, backproject(cell, deltas, record))
    ```

    Reference:
        Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent
        neural networks", ICML 2013 (PMLR vol. 28), arXiv:1211.5063, eq. (9)
        and the authors' code.
    """
    deltas = ops.convert_to_tensor(deltas)
    backprojected = ops.convert_to_tensor(backprojected, dtype=deltas.dtype)
    if len(deltas.shape) != 3 or tuple(deltas.shape) != tuple(backprojected.shape):
        raise ValueError(
            "vanishing_penalty: deltas and backprojected must both have shape "
            f"(batch, time, units); got {tuple(deltas.shape)} and "
            f"{tuple(backprojected.shape)}")
    below = ops.sum(ops.square(deltas), axis=-1)
    above = ops.sum(ops.square(backprojected), axis=-1)
    kept = ops.greater_equal(below, bound)
    ratio = ops.where(kept, above / ops.where(kept, below, 1.0), 1.0)
    count = ops.sum(ops.cast(kept, deltas.dtype))
    omega = ops.sum(ops.square(ratio - 1.0)) / ops.maximum(count, 1.0)
    return omega, count / ops.cast(ops.size(below), deltas.dtype)


def recurrent_matrices(cell):
    """The hidden-to-hidden matrices of a cell, the variables Ω trains."""
    if isinstance(cell, DeepTransitionCell):
        matrices = [cell.recurrent_kernel, *cell.transition_kernels]
        if cell.shortcut_kernel is not None:
            matrices.append(cell.shortcut_kernel)
        return matrices
    return [cell.recurrent_kernel]


def backproject(cell, deltas, record):
    """δ_k J_k for every step: the error signal carried one step back.

    The activations' derivatives are computed from the recorded states and
    held constant; the result depends on the cell's recurrent matrices,
    which is what the gradient of Ω is taken with respect to.

    Args:
        cell: a built `keras.layers.SimpleRNNCell` or `DeepTransitionCell`.
        deltas: δ_k, shape ``(batch, time, units)``.
        record: the cell's inputs and states of the forward pass, a dict with
            ``states`` (h_k) and, for a `DeepTransitionCell`, ``projected``
            (x_k U + b_1) and ``previous`` (h_{k-1}), each ``(batch, time, .)``.

    Returns:
        A tensor of the shape of ``deltas``.
    """
    deltas = ops.convert_to_tensor(deltas)
    record = {k: ops.convert_to_tensor(v) for k, v in record.items()}
    if isinstance(cell, keras.layers.SimpleRNNCell):
        # h_k = φ(x_k K + b + h_{k-1} R): δ_k J_k = (δ_k ⊙ φ'(h_k)) Rᵀ.
        slope = _derivative(cell.activation, record["states"], "the SimpleRNN cell")
        return ops.matmul(deltas * slope, ops.transpose(cell.recurrent_kernel))
    if isinstance(cell, DeepTransitionCell):
        return _backproject_deep_transition(cell, deltas, record)
    raise ValueError(
        f"VanishingGradientRegularizer: cannot carry the gradient back through a "
        f"{type(cell).__name__}; supported cells are SimpleRNNCell and DeepTransitionCell")


def _backproject_deep_transition(cell, deltas, record):
    projected, previous = record["projected"], record["previous"]
    stop = ops.stop_gradient
    kernels = list(cell.transition_kernels)
    # The forward pass again, with the weights as constants: the outputs of
    # the transition's layers, of which only the derivatives are needed.
    outputs = []
    z = projected + ops.matmul(previous, stop(cell.recurrent_kernel))
    z = cell.activation(z) if not kernels else cell.transition_activation(z)
    outputs.append(stop(z))
    for l, kernel in enumerate(kernels, start=1):
        z = ops.matmul(z, stop(kernel))
        if cell.use_bias:
            z = z + stop(cell.transition_biases[l - 1])
        if l == len(kernels):
            if cell.shortcut_kernel is not None:
                z = z + ops.matmul(previous, stop(cell.shortcut_kernel))
            z = cell.activation(z)
        else:
            z = cell.transition_activation(z)
        outputs.append(stop(z))
    # h_k = a h_{k-1} + (1 - a) h~_k with leaky integration.
    leak = None
    if cell.leaky is not None:
        leak = stop(ops.sigmoid(cell.leak)) if cell.leak is not None else cell.leaky
    signal = deltas if leak is None else deltas * (1.0 - leak)
    signal = signal * _derivative(cell.activation, outputs[-1], "the DeepTransitionCell state")
    back = 0.0
    for l in range(len(kernels), 0, -1):
        if l == len(kernels) and cell.shortcut_kernel is not None:
            back = back + ops.matmul(signal, ops.transpose(cell.shortcut_kernel))
        signal = ops.matmul(signal, ops.transpose(kernels[l - 1]))
        signal = signal * _derivative(cell.transition_activation, outputs[l - 1],
                                      "the DeepTransitionCell transition")
    back = back + ops.matmul(signal, ops.transpose(cell.recurrent_kernel))
    if leak is not None:
        back = back + deltas * leak
    return back


class _Probe:
    """The stand-in cell: the real cell's step, plus the probe's slice of the
    step's inputs added to the new state."""

    def __init__(self, cell, features, training):
        self.cell, self.features, self.training = cell, features, training

    def __call__(self, inputs, states):
        x, probe = inputs[..., :self.features], inputs[..., self.features:]
        output, new_states = self.cell(x, states, training=self.training)
        output = output + probe
        return output, [output]


def _probed_inner_loop(layer, recorder, sequences, initial_state, mask, training=False):
    """`inner_loop` of a supported layer with a zero probe added to each state."""
    probe = recorder.probes[layer.name]
    cell = layer.cell
    if tuple(probe.shape[1:2]) != tuple(sequences.shape[1:2]) and None not in (
            probe.shape[1], sequences.shape[1]):
        raise ValueError(
            f"VanishingGradientRegularizer: layer {layer.name!r} runs over "
            f"{sequences.shape[1]} steps, but the model's input has {probe.shape[1]}; "
            "the regularizer needs a recurrent layer over the input's time axis")
    record = {}

    def run(cell_inputs):
        stand_in = _Probe(cell, cell_inputs.shape[-1], training)
        joined = ops.concatenate([cell_inputs, ops.cast(probe, cell_inputs.dtype)], axis=-1)
        return _keras_internals.run_rnn_inner_loop(layer, stand_in, joined, initial_state,
                                                   mask, training=training)

    if isinstance(layer, DeepTransitionRNN):
        with cell.noisy_weights(training):
            projected = cell.project_inputs(sequences)
            with cell.inputs_projected():
                last, outputs, states = run(projected)
        first = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
        record["projected"] = projected
        record["previous"] = ops.concatenate(
            [ops.expand_dims(ops.cast(first, outputs.dtype), 1), outputs[:, :-1]], axis=1)
    else:
        last, outputs, states = run(sequences)
    record["states"] = outputs
    recorder.records[layer.name] = record
    if not layer.return_sequences:
        return last, last, states
    if mask is not None and layer.zero_output_for_mask:
        outputs = ops.where(ops.expand_dims(ops.cast(mask, "bool"), -1), outputs, 0.0)
    return last, outputs, states


class _Recorder:
    """Holds the probes of one traced step and what the layers recorded."""

    def __init__(self, layers):
        self.layers = layers
        self.probes = {}
        self.records = {}

    def make_probes(self, x):
        first = next(i for i in keras.tree.flatten(x) if i is not None)
        shape = ops.shape(first)
        return {layer.name: ops.zeros((shape[0], shape[1], layer.cell.state_size),
                                      dtype=layer.compute_dtype)
                for layer in self.layers}

    def __enter__(self):
        for layer in self.layers:
            object.__setattr__(layer, "inner_loop",
                               functools.partial(_probed_inner_loop, layer, self))
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            object.__delattr__(layer, "inner_loop")
        return False


def _check_layer(layer):
    if not isinstance(layer, keras.layers.RNN):
        raise ValueError(
            f"VanishingGradientRegularizer: layer {layer.name!r} is a "
            f"{type(layer).__name__}, not a recurrent layer")
    if not isinstance(layer.cell, (keras.layers.SimpleRNNCell, DeepTransitionCell)):
        raise ValueError(
            f"VanishingGradientRegularizer: layer {layer.name!r} has a "
            f"{type(layer.cell).__name__}; supported cells are SimpleRNNCell and "
            "DeepTransitionCell")
    if layer.go_backwards:
        raise ValueError(
            f"VanishingGradientRegularizer: layer {layer.name!r} runs backwards "
            "(go_backwards=True), which the regularizer does not support")
    if getattr(layer.cell, "recurrent_dropout", 0):
        raise ValueError(
            f"VanishingGradientRegularizer: layer {layer.name!r} has recurrent "
            "dropout, which changes ∂h_k/∂h_(k-1); the regularizer does not support it")
    return layer


@export
class VanishingGradientRegularizer(keras.callbacks.Callback):
    """Train recurrent layers with Pascanu et al.'s regularizer Ω.

    Passed to `fit`, it changes that `fit`'s training step: the gradient of
    α Ω with respect to each layer's recurrent matrices (δ_k and the
    activations' derivatives held constant) is added to the gradient of the
    loss before the optimizer, and so before any `ClipGradients` clipping,
    as in the authors' code. The logs get ``omega`` (the epoch's mean Ω; the
    progress bar shows the running mean) and ``omega_weight`` (α at the end
    of the epoch). The model's own training step is back after the `fit`.

    Under a TensorFlow distribution strategy each replica adds its share (Ω of its
    part of the batch divided by the number of replicas), so the summed
    update uses the mean of the replicas' Ω. A model's `.keras` file does not
    hold the regularizer: it is part of the training procedure, like the
    other callbacks.

    Args:
        weight: α: a float, or a `keras.optimizers.schedules.LearningRateSchedule`
            evaluated at the optimizer's step count (the paper decays α on
            natural problems; the step count is checkpointed with the
            optimizer, so a resumed run continues the schedule).
        layers: names of the recurrent layers to regularize; None: every
            `SimpleRNN`/`DeepTransitionRNN`-style layer of the model.
        bound: the terms whose ‖δ_k‖² is below it are left out (the code's 1e-20).

    Example:

    ```python
    model.compile(ClipGradients(keras.optimizers.SGD(0.01), threshold=1.0),
                  "sparse_categorical_crossentropy")
    model.fit(x, y, callbacks=[VanishingGradientRegularizer(weight=4.0)])
    ```

    Reference:
        Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent
        neural networks", ICML 2013 (PMLR vol. 28), arXiv:1211.5063,
        section 3.3; the authors' code, `pascanur/trainingRNNs`.
    """

    def __init__(self, weight=1.0, layers=None, bound=1e-20):
        super().__init__()
        if isinstance(weight, dict):
            weight = keras.optimizers.schedules.deserialize(weight)
        if not isinstance(weight, keras.optimizers.schedules.LearningRateSchedule):
            weight = float(weight)
            if weight < 0:
                raise ValueError(f"VanishingGradientRegularizer: weight must be >= 0, got {weight}")
        if isinstance(layers, str):
            layers = [layers]
        self.weight = weight
        self.layers = None if layers is None else list(layers)
        self.bound = float(bound)
        self._recorder = None

    def get_config(self):
        weight = self.weight
        if isinstance(weight, keras.optimizers.schedules.LearningRateSchedule):
            weight = keras.optimizers.schedules.serialize(weight)
        return {"weight": weight, "layers": self.layers, "bound": self.bound}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- which layers --------------------------------------------------------
    def target_layers(self, model):
        """The recurrent layers of ``model`` the regularizer trains."""
        everything = [model, *_keras_internals.flatten_layers(model)]
        if self.layers is None:
            found = [l for l in everything if isinstance(l, keras.layers.RNN)
                     and isinstance(l.cell, (keras.layers.SimpleRNNCell, DeepTransitionCell))]
            if not found:
                raise ValueError(
                    "VanishingGradientRegularizer: the model has no SimpleRNN or "
                    "DeepTransitionRNN layer to regularize")
            return [_check_layer(l) for l in found]
        by_name = {l.name: l for l in everything}
        missing = [n for n in self.layers if n not in by_name]
        if missing:
            raise ValueError(
                f"VanishingGradientRegularizer: no layer named {missing} in the model; "
                f"its layers are {sorted(by_name)}")
        return [_check_layer(by_name[n]) for n in self.layers]

    def weight_at(self, step):
        """α at optimizer step ``step``."""
        if isinstance(self.weight, keras.optimizers.schedules.LearningRateSchedule):
            return ops.cast(self.weight(step), "float32")
        return ops.convert_to_tensor(self.weight, "float32")

    def penalty(self, deltas):
        """Ω summed over the layers, from the current step's records; a
        function of the layers' recurrent matrices."""
        total = 0.0
        for layer in self._recorder.layers:
            record = self._recorder.records.get(layer.name)
            if record is None:
                raise ValueError(
                    f"VanishingGradientRegularizer: layer {layer.name!r} was not run "
                    "in the training step")
            delta = ops.stop_gradient(ops.cast(deltas[layer.name], record["states"].dtype))
            record = {k: ops.stop_gradient(v) for k, v in record.items()}
            omega, _ = vanishing_penalty(delta, backproject(layer.cell, delta, record),
                                         self.bound)
            total = total + omega
        return total

    # -- the callback ----------------------------------------------------------
    def set_model(self, model):
        super().set_model(model)
        self._recorder = _Recorder(self.target_layers(model))
        backend = keras.backend.backend()
        if backend == "tensorflow":
            step = functools.partial(_tensorflow_train_step, model, self)
        elif backend == "jax":
            step = functools.partial(_jax_train_step, model, self)
        elif backend == "torch":
            step = functools.partial(_torch_train_step, model, self)
        else:
            raise ValueError(
                f"VanishingGradientRegularizer: the {backend} backend is not supported "
                "(TensorFlow, JAX and torch are)")
        _keras_internals.install_train_step(model, step)

    def on_epoch_begin(self, epoch, logs=None):
        self._sum, self._count = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and "omega" in logs:
            self._sum = self._sum + logs["omega"]
            self._count += 1
            logs["omega"] = self._sum / self._count

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["omega"] = (float(ops.convert_to_numpy(self._sum)) / self._count
                         if self._count else float("nan"))
        step = self.model.optimizer.iterations
        logs["omega_weight"] = float(ops.convert_to_numpy(self.weight_at(step)))

    def on_train_end(self, logs=None):
        _keras_internals.restore_train_step(self.model)


def _recurrent_indices(model, layers):
    """Positions of the layers' recurrent matrices in ``model.trainable_variables``."""
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    return [position[id(v)] for layer in layers for v in recurrent_matrices(layer.cell)
            if id(v) in position]


def _tensorflow_train_step(model, regularizer, data):
    # The TensorFlow backend's own training step (Keras' `train_step` on that
    # backend is a GradientTape too); the JAX one is below.
    import tensorflow as tf

    recorder = regularizer._recorder
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    trainable = model.trainable_variables
    with tf.GradientTape() as tape:
        probes = recorder.probes = recorder.make_probes(x)
        tape.watch(list(probes.values()))
        with recorder:
            y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=True)
        _keras_internals.track_loss(model, loss * _distribute.num_replicas(), x)
        loss = model.optimizer.scale_loss(loss)
    names = list(probes)
    found = tape.gradient(loss, [*trainable, *probes.values()])
    grads, deltas = found[:len(trainable)], dict(zip(names, found[len(trainable):]))
    indices = _recurrent_indices(model, recorder.layers)
    alpha = regularizer.weight_at(model.optimizer.iterations)
    with tf.GradientTape() as penalty_tape:
        omega = regularizer.penalty(deltas)
        scaled = model.optimizer.scale_loss(alpha * omega / _distribute.num_replicas())
    extra = penalty_tape.gradient(scaled, [trainable[i] for i in indices])
    for i, g in zip(indices, extra):
        if g is not None:
            grads[i] = g if grads[i] is None else grads[i] + g
    model.optimizer.apply_gradients(zip(grads, trainable))
    logs = dict(model.compute_metrics(x, y, y_pred, sample_weight=sample_weight))
    logs["omega"] = omega
    return logs


def _torch_train_step(model, regularizer, data):
    # The TensorFlow step above with torch autograd for the tape, as Keras'
    # own torch `train_step` (the optimizer steps under torch.no_grad()).
    recorder = regularizer._recorder
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    trainable = model.trainable_variables
    probes = recorder.probes = {name: _keras_internals.torch_watch(probe)
                                for name, probe in recorder.make_probes(x).items()}
    with recorder:
        y_pred = model(x, training=True)
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                              training=True)
    _keras_internals.track_loss(model, loss, x)
    loss = model.optimizer.scale_loss(loss)
    names = list(probes)
    found = _keras_internals.torch_gradients(
        loss, [*(v.value for v in trainable), *probes.values()])
    grads, deltas = found[:len(trainable)], dict(zip(names, found[len(trainable):]))
    indices = _recurrent_indices(model, recorder.layers)
    alpha = regularizer.weight_at(model.optimizer.iterations)
    omega = regularizer.penalty(deltas)
    scaled = model.optimizer.scale_loss(alpha * omega)
    extra = _keras_internals.torch_gradients(scaled, [trainable[i].value for i in indices])
    for i, g in zip(indices, extra):
        if g is not None:
            grads[i] = g if grads[i] is None else grads[i] + g
    with _keras_internals.torch_no_grad():
        model.optimizer.apply_gradients(zip(grads, trainable))
    logs = dict(model.compute_metrics(x, y, y_pred, sample_weight=sample_weight))
    logs["omega"] = ops.stop_gradient(omega)
    return logs


def _jax_train_step(model, regularizer, state, data):
    import jax

    recorder = regularizer._recorder
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

    def loss_fn(trainable, probes):
        recorder.probes = probes
        with recorder:
            loss, aux = model.compute_loss_and_updates(
                trainable, non_trainable, metrics_variables, x, y, sample_weight,
                training=True, optimizer_variables=optimizer_variables)
        return loss, (aux, dict(recorder.records))

    (loss, (aux, records)), (grads, deltas) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(trainable, recorder.make_probes(x))
    unscaled_loss, y_pred, non_trainable, metrics_variables = aux
    indices = _recurrent_indices(model, recorder.layers)
    variables = model.trainable_variables
    optimizer = model.optimizer
    with keras.StatelessScope(state_mapping=list(zip(optimizer.variables,
                                                     optimizer_variables))):
        alpha = regularizer.weight_at(optimizer.iterations)

    def penalty_fn(values):
        # Every model variable mapped (fit has dropped the variables' own
        # values on JAX), the recurrent matrices to the values differentiated.
        current = list(trainable)
        for i, v in zip(indices, values):
            current[i] = v
        mapping = [*zip(variables, current),
                   *zip(model.non_trainable_variables, non_trainable)]
        with keras.StatelessScope(state_mapping=mapping):
            recorder.records = records
            omega = regularizer.penalty(deltas)
        with keras.StatelessScope(state_mapping=list(zip(optimizer.variables,
                                                         optimizer_variables))):
            scaled = optimizer.scale_loss(alpha * omega)
        return scaled, omega

    (_, omega), extra = jax.value_and_grad(penalty_fn, has_aux=True)(
        [trainable[i] for i in indices])
    grads = list(grads)
    for i, g in zip(indices, extra):
        grads[i] = grads[i] + g
    trainable, optimizer_variables = optimizer.stateless_apply(
        optimizer_variables, grads, trainable)
    logs, metrics_variables = _keras_internals.jax_update_metrics(
        model, metrics_variables, unscaled_loss, x, y, y_pred, sample_weight)
    logs = dict(logs)
    logs["omega"] = omega
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)
