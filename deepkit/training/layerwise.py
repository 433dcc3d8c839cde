"""Greedy layer-wise pre-training with denoising auto-encoders, as a `Trainer`.

`DenoisingPretraining(layer)` trains one `Dense` layer of a model as the
encoder of a denoising auto-encoder of that layer's input, the layers below it
fixed; one `Stage` per hidden layer, bottom up, followed by a supervised
stage, is the stacked denoising auto-encoder of Vincent et al. 2010.
"""

import keras
from keras import ops

from deepkit import export as _registry
from deepkit.export import export
from deepkit.training.stages import Trainer

# Accepted names of the reconstruction loss -> the canonical one.
_LOSSES = {
    "binary_crossentropy": "binary_crossentropy",
    "bce": "binary_crossentropy",
    "mse": "mse",
    "mean_squared_error": "mse",
}


def reconstruction_loss(target, logits, loss="binary_crossentropy", sample_weight=None):
    """The reconstruction error of a denoising auto-encoder, summed over units.

    Per example, the sum over the units of the reconstruction ``z = f(logits)``
    of:

    - ``"binary_crossentropy"``: ``-(x log z + (1 - x) log(1 - z))`` with
      ``z = sigmoid(logits)``, computed from the logits
      (``softplus(a) - x a``), so it never overflows;
    - ``"mse"``: ``(x - z)²`` with ``z = logits`` (linear units);

    then the mean over the batch (with ``sample_weight``, the weighted sum
    divided by the batch size, as Keras' losses do). This is Vincent et al.'s
    ``L_H(x, z)`` and ``L_2(x, z)`` per example, averaged over the
    mini-batch; Keras' `binary_crossentropy` and `mean_squared_error` take the
    mean over the units instead, which is this divided by the number of units.

    Args:
        target: the clean inputs ``x``, ``[batch, ...]`` (in [0, 1] for the
            cross-entropy).
        logits: the decoder's pre-activation, shaped like ``target``.
        loss: ``"binary_crossentropy"`` or ``"mse"``.
        sample_weight: optional ``[batch]`` weights.

    Returns:
        A scalar.
    """
    kind = _loss_name(loss)
    logits = ops.cast(logits, "float32")
    target = ops.cast(target, "float32")
    if kind == "binary_crossentropy":
        per_unit = ops.relu(logits) - target * logits + ops.log1p(ops.exp(-ops.abs(logits)))
    else:
        per_unit = ops.square(logits - target)
    rank = len(per_unit.shape)
    per_example = ops.sum(per_unit, axis=tuple(range(1, rank))) if rank > 1 else per_unit
    if sample_weight is not None:
        per_example = per_example * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return ops.mean(per_example)


def _loss_name(loss):
    kind = _LOSSES.get(loss) if isinstance(loss, str) else None
    if kind is None:
        raise ValueError(f"DenoisingPretraining: loss must be one of {sorted(_LOSSES)} (a "
                         f"sigmoid decoder for the cross-entropy, a linear one for mse), "
                         f"got {loss!r}")
    return kind


def _layer_paths(model, prefix=""):
    """``["hidden_1", "block/dense", ...]``: every layer of `model`, nested
    models' layers as ``"outer/inner"`` paths."""
    paths = []
    for layer in getattr(model, "layers", []):
        path = f"{prefix}{layer.name}"
        paths.append(path)
        if isinstance(layer, keras.Model):
            paths.extend(_layer_paths(layer, f"{path}/"))
    return paths


def _find(model, name):
    """`(containers, layer)`: the layer at path `name` ("a" or "sub/a") and
    the models it is nested in, outermost first."""
    containers, current = [], model
    for part in name.split("/"):
        if not isinstance(current, keras.Model):
            raise ValueError(
                f"DenoisingPretraining: no layer {name!r} in model {model.name!r}: "
                f"{current.name!r} is a {type(current).__name__}, not a model with layers; "
                f"the model's layers: {', '.join(_layer_paths(model)) or 'none'}")
        try:
            child = current.get_layer(part)
        except ValueError:
            raise ValueError(
                f"DenoisingPretraining: no layer {name!r} in model {model.name!r}; "
                f"the model's layers: {', '.join(_layer_paths(model)) or 'none'}") from None
        containers.append(current)
        current = child
    return containers, current


def _is_functional(model):
    return (isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
            and hasattr(model, "inputs") and getattr(model, "inputs", None) is not None)


def _prefix_part(container, child, name):
    """The layers of `container` that compute `child`'s input, as a list of
    layers to apply in order."""
    if isinstance(container, keras.Sequential):
        index = next(i for i, layer in enumerate(container.layers) if layer is child)
        return list(container.layers[:index])
    if _is_functional(container):
        if _is_functional(child):
            raise ValueError(
                f"DenoisingPretraining: layer {name!r}: the nested functional model "
                f"{child.name!r} inside the functional model {container.name!r} is not "
                "supported (its input in the outer graph is not reachable through "
                "public Keras API); nest it in a Sequential, or pre-train a layer of the "
                "nested model by itself")
        try:
            child_input = child.input
            part = keras.Model(container.input, child_input,
                               name=f"{container.name}_below_{child.name}")
        except Exception as error:
            raise ValueError(
                f"DenoisingPretraining: cannot take the layers below {name!r} in "
                f"{container.name!r} as a model ({error}); the layer must be used once "
                "in the model's graph") from error
        return [part]
    raise ValueError(
        f"DenoisingPretraining: layer {name!r}: {container.name!r} is a subclassed "
        f"{type(container).__name__}, whose layers below {child.name!r} are not known; "
        "DenoisingPretraining trains layers of Sequential and functional models")


def _corruption(corruption):
    """A corruption layer (or None) from a layer, a Keras config or {Name: config}."""
    if corruption is None or isinstance(corruption, keras.layers.Layer):
        return corruption
    if isinstance(corruption, dict):
        if "class_name" in corruption:
            return keras.layers.deserialize(corruption)
        if len(corruption) == 1:
            (name, config), = corruption.items()
            for cls in (_registry.registry().get(name), getattr(keras.layers, str(name), None)):
                if isinstance(cls, type) and issubclass(cls, keras.layers.Layer):
                    return cls(**(config or {}))
    raise ValueError("DenoisingPretraining: corruption must be a Keras layer (such as "
                     "deepkit.layers.SaltAndPepper), its serialized config, "
                     f"{{Name: config}} or None; got {corruption!r}")


class _DenoisingPhase(keras.Model):
    """The auto-encoder of one layer: ``x -> prefix -> corrupt -> layer -> decoder``.

    Called on the model's inputs, returns ``(clean, logits)``: the layer's
    clean input (the output of the frozen layers below it) and the
    decoder's pre-activation; `compute_loss` is the reconstruction error of
    the clean input (`reconstruction_loss`), whatever the targets.
    """

    def __init__(self, prefix, encoder, corruption, loss, tied_weights, seed, **kwargs):
        kwargs.setdefault("name", "denoising_phase")  # not "_...": TF scope names
        super().__init__(**kwargs)
        # Attribute order fixes the order of `variables`, and the attribute
        # names the paths of saved weights: a rebuilt phase restores them.
        self.prefix = list(prefix)
        self.corruption = corruption
        self.encoder = encoder
        self.loss_kind = _loss_name(loss)
        self.tied_weights = bool(tied_weights)
        visible = int(encoder.kernel.shape[0])
        units = int(encoder.kernel.shape[-1])
        if self.tied_weights:
            self.decoder = None
            self.decoder_bias = self.add_weight(shape=(visible,), initializer="zeros",
                                                name="decoder_bias")
        else:
            self.decoder = keras.layers.Dense(
                visible, kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                name="decoder")
            self.decoder.build((None, units))
            self.decoder_bias = None
        self.built = True

    def clean_input(self, inputs):
        """The uncorrupted input of the layer: the frozen layers below it."""
        h = inputs
        for layer in self.prefix:
            h = layer(h, training=False)
        return h

    def call(self, inputs, training=None):
        clean = ops.stop_gradient(self.clean_input(inputs))
        noisy = clean if self.corruption is None else self.corruption(clean, training=training)
        hidden = self.encoder(noisy)
        if self.tied_weights:
            kernel = ops.cast(self.encoder.kernel, hidden.dtype)
            logits = (ops.matmul(hidden, ops.transpose(kernel))
                      + ops.cast(self.decoder_bias, hidden.dtype))
        else:
            logits = self.decoder(hidden)
        return clean, logits

    def reconstruct(self, inputs, training=False):
        """The reconstruction of the layer's input (sigmoid or linear units)."""
        _, logits = self(inputs, training=training)
        return ops.sigmoid(logits) if self.loss_kind == "binary_crossentropy" else logits

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`reconstruction_loss` of the clean input (y is never read), plus
        the phase's added losses (the layer's regularizers)."""
        clean, logits = y_pred
        loss = reconstruction_loss(clean, logits, self.loss_kind, sample_weight)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return loss


@export
class DenoisingPretraining(Trainer):
    """Pre-train one `Dense` layer of a model as a denoising auto-encoder.

    Greedy unsupervised layer-wise pre-training (Bengio et al. 2007) with
    denoising auto-encoders (Vincent et al. 2010): ``fit(model, x, ...)``
    trains the `Dense` layer named `layer` to reconstruct its own clean input
    from a corrupted copy, with the layers below it fixed:

    ``x̃ ~ C(x̃ | x)``, ``h = s(x̃ W + b)`` (the layer itself, its activation
    included), ``z = f(h W' + b')`` with ``W' = Wᵀ`` (tied weights) or a
    matrix of its own, and the loss ``L(x, z)`` of the *uncorrupted* ``x``,
    where ``x`` is the output of the model's layers below `layer` (computed
    with ``training=False``, never trained) and ``f`` is the sigmoid for
    ``loss="binary_crossentropy"`` (inputs in [0, 1]: pixels, sigmoid units)
    or the identity for ``loss="mse"``.

    Loss convention: per example, the loss is *summed* over the reconstructed
    units and then averaged over the mini-batch (`reconstruction_loss`),
    Vincent et al.'s ``L_H`` / ``L_2`` and the loss of the deeplearning.net
    DAE tutorial; it is the number of units times Keras' `binary_crossentropy`
    or `mean_squared_error` (which average over the units), so a learning
    rate tuned for one does not carry over to the other. The targets ``y``
    are never read.

    Each `fit` builds a small auxiliary model that shares the layer (its
    kernel and bias are what train) and holds the decoder's new variables
    (the decoder bias ``b'``; with untied weights a new `Dense`). Its
    ``fit`` is an ordinary Keras ``fit`` called with this call's arguments
    (epochs, callbacks, validation data, initial epoch, ...), so callbacks
    run once per epoch, and in `fit_stages` the checkpoints
    (`ExactBackupAndRestore`, which then saves the auxiliary model: the
    layer's weights, the decoder and the optimizer state), the CSV history
    and early stopping act on it as they act on ``model.fit``. The logged
    ``loss`` (and ``val_loss``, computed without corruption) is the
    reconstruction loss. Only the layer's weights change in the model; the
    decoder is discarded after the call. The optimizer is new for every
    call (so its step count, and any learning-rate schedule, start from 0).

    A stacked denoising auto-encoder is one
    ``Stage(trainer=DenoisingPretraining(layer=...))`` per hidden layer,
    bottom up, followed by a supervised fine-tuning `Stage`:

    ```python
    stages = [Stage("pretrain_1", epochs=5, trainer=DenoisingPretraining(
                  "hidden_1", corruption=SaltAndPepper(0.25, seed=1))),
              Stage("pretrain_2", epochs=5, trainer=DenoisingPretraining(
                  "hidden_2", corruption=SaltAndPepper(0.25, seed=2))),
              Stage("finetune", epochs=20)]
    fit_stages(model, stages, (x, y), batch_size=100, seed=1)
    ```

    In recipes: ``fit: {trainer: {DenoisingPretraining: {layer: hidden_1,
    corruption: {SaltAndPepper: {rate: 0.25, seed: 1}}}}}``.

    Args:
        layer: the name of a `keras.layers.Dense` layer of the model (of a
            Sequential or functional model; ``"submodel/layer"`` names a
            layer of a nested model).
        corruption: the corruption of the layer's input in training: a
            Keras layer that corrupts when called with ``training=True``
            (`deepkit.layers.SaltAndPepper`, `MaskingCorruption`,
            `GaussianCorruption`, or Keras' `GaussianNoise`), its serialized
            config or ``{Name: config}``; None: no corruption (a plain
            auto-encoder). Its random state is set every epoch by
            `fit_stages` (from the stage's seed and the epoch).
        loss: ``"binary_crossentropy"`` (sigmoid reconstruction, for inputs
            in [0, 1]) or ``"mse"`` (linear reconstruction).
        tied_weights: decode with the transposed kernel of the layer (True)
            or with a new `Dense` layer.
        optimizer: the optimizer of the pre-training (a Keras optimizer, its
            config or name), copied afresh for every call; None: a fresh copy
            of the model's compiled optimizer, or ``SGD(0.01)`` when the model
            has none.
        seed: seed of the initial weights of the untied decoder (Glorot
            uniform); fixed by default, so that a stage started again from
            its beginning draws the same decoder.

    Example:

    ```python
    import keras
    import numpy as np
    from deepkit.layers import SaltAndPepper
    from deepkit.training import DenoisingPretraining, Stage, fit_stages

    rng = np.random.default_rng(0)
    x = (rng.random((256, 20)) < 0.3).astype("float32")
    y = (x[:, :10].sum(axis=1) > 3).astype("int32")
    model = keras.Sequential([keras.Input((20,)),
                              keras.layers.Dense(16, "sigmoid", name="hidden_1"),
                              keras.layers.Dense(8, "sigmoid", name="hidden_2"),
                              keras.layers.Dense(2, "softmax", name="output")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    # One layer by itself:
    history = DenoisingPretraining("hidden_1", SaltAndPepper(0.25, seed=1)).fit(
        model, x, epochs=2, batch_size=32, verbose=0)
    print(history.history["loss"])
    # The stacked denoising auto-encoder, then supervised fine-tuning:
    stages = [Stage("pretrain_1", epochs=2, trainer=DenoisingPretraining(
                  "hidden_1", corruption=SaltAndPepper(0.25, seed=1))),
              Stage("pretrain_2", epochs=2, trainer=DenoisingPretraining(
                  "hidden_2", corruption=SaltAndPepper(0.25, seed=2))),
              Stage("finetune", epochs=2)]
    results = fit_stages(model, stages, (x, y), batch_size=32, seed=1)
    print([(r.name, round(r.best_train_loss, 3)) for r in results])
    ```

    Reference:
        Vincent, Larochelle, Lajoie, Bengio, Manzagol 2010, "Stacked
        Denoising Autoencoders: Learning Useful Representations in a Deep
        Network with a Local Denoising Criterion", JMLR 11, 3371-3408
        (sections 3.2 and 3.5, Figure 3); Bengio, Lamblin, Popovici,
        Larochelle 2007, "Greedy Layer-Wise Training of Deep Networks",
        NIPS 19.
    """

    def __init__(self, layer, corruption=None, loss="binary_crossentropy", tied_weights=True,
                 optimizer=None, seed=0):
        if not isinstance(layer, str) or not layer:
            raise ValueError("DenoisingPretraining: layer must be the name of a Dense layer "
                             f"of the model, got {layer!r}")
        if isinstance(tied_weights, str) or not isinstance(tied_weights, (bool, int)):
            raise ValueError(f"DenoisingPretraining: tied_weights must be True or False, got "
                             f"{tied_weights!r}")
        self.layer = layer
        self.corruption = _corruption(corruption)
        self.loss = _loss_name(loss)
        self.tied_weights = bool(tied_weights)
        if optimizer is not None and not isinstance(
                optimizer, (keras.optimizers.Optimizer, str, dict)):
            raise ValueError("DenoisingPretraining: optimizer must be a Keras optimizer, its "
                             f"config or name, or None; got {optimizer!r}")
        self.optimizer = optimizer
        self.seed = None if seed is None else int(seed)

    def get_config(self):
        optimizer = self.optimizer
        if isinstance(optimizer, keras.optimizers.Optimizer):
            optimizer = keras.optimizers.serialize(optimizer)
        corruption = (None if self.corruption is None
                      else keras.layers.serialize(self.corruption))
        return {"layer": self.layer, "corruption": corruption, "loss": self.loss,
                "tied_weights": self.tied_weights, "optimizer": optimizer, "seed": self.seed}

    # -- pieces -------------------------------------------------------------

    def target_layer(self, model):
        """The `Dense` layer this trainer trains in `model`."""
        return self._locate(model)[1]

    def _locate(self, model):
        if not isinstance(model, keras.Model):
            raise ValueError(f"DenoisingPretraining trains a layer of a Keras model, got "
                             f"{type(model).__name__}")
        if not model.built:
            raise ValueError(
                f"DenoisingPretraining: model {model.name!r} is not built; build it before "
                "pre-training (give it a keras.Input, call it on data or "
                "model.build(input_shape)), so that its layers have weights")
        containers, layer = _find(model, self.layer)
        if not isinstance(layer, keras.layers.Dense):
            raise ValueError(
                f"DenoisingPretraining: layer {self.layer!r} is a {type(layer).__name__}, "
                f"not a Dense layer; the Dense layers of model {model.name!r}: "
                f"{', '.join(_dense_paths(model)) or 'none'}")
        if not layer.built:
            raise ValueError(f"DenoisingPretraining: layer {self.layer!r} is not built")
        return containers, layer

    def auxiliary_model(self, model):
        """The auto-encoder of the layer that `fit` trains (not compiled).

        A `keras.Model` sharing `model`'s layers: called on the model's
        inputs it returns ``(clean, logits)``, the layer's clean input and
        the decoder's pre-activation; ``reconstruct(x)`` gives the
        reconstruction and ``compute_loss`` the reconstruction loss. The
        layers below the layer are applied with ``training=False``; `fit`
        also marks their variables non-trainable while it trains.
        """
        containers, layer = self._locate(model)
        prefix = []
        chain = containers + [layer]
        for container, child in zip(chain[:-1], chain[1:]):
            prefix.extend(_prefix_part(container, child, self.layer))
        return _DenoisingPhase(prefix, layer, self.corruption, self.loss, self.tied_weights,
                               self.seed, name=f"denoising_{layer.name}")

    def _new_optimizer(self, model):
        spec = self.optimizer
        if spec is None:
            spec = getattr(model, "optimizer", None)
            if spec is None:
                return keras.optimizers.SGD(0.01)
        if isinstance(spec, keras.optimizers.Optimizer):
            return keras.optimizers.deserialize(keras.optimizers.serialize(spec))
        return keras.optimizers.get(spec)

    # -- training -------------------------------------------------------------

    def fit(self, model, x=None, y=None, **fit_arguments):
        """Pre-train the layer; the arguments are `Model.fit`'s, `model` first.

        Args:
            model: a built Sequential or functional model holding the layer.
            x: the model's inputs (arrays), or a dataset of ``(x, y)`` or
                ``(x, y, sample_weight)`` batches such as `fit_stages`'
                `EpochShuffledArrays`; sample weights weigh the examples'
                losses.
            y: ignored (the targets are the layer's clean inputs).
            **fit_arguments: `Model.fit` arguments (``epochs``,
                ``batch_size``, ``callbacks``, ``validation_data``,
                ``initial_epoch``, ``shuffle``, ``verbose``, ...) for the
                auxiliary model's ``fit``; callbacks see the auxiliary model
                as ``self.model``.

        Returns:
            The `keras.callbacks.History` of the auxiliary model's ``fit``.
        """
        if x is None:
            raise ValueError("DenoisingPretraining.fit needs the training inputs x")
        phase = self.auxiliary_model(model)
        phase.compile(optimizer=self._new_optimizer(model))
        frozen = [(v, v.trainable) for layer in phase.prefix for v in layer.variables]
        for variable, _ in frozen:
            variable.trainable = False
        try:
            return phase.fit(x, **fit_arguments)
        finally:
            for variable, flag in frozen:
                variable.trainable = flag


def _dense_paths(model, prefix=""):
    paths = []
    for layer in getattr(model, "layers", []):
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.layers.Dense):
            paths.append(path)
        if isinstance(layer, keras.Model):
            paths.extend(_dense_paths(layer, f"{path}/"))
    return paths
