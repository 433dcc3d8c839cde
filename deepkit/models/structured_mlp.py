"""StructuredMLP: Gulcehre & Bengio's two-tier network for the Pentomino task."""

import keras
from keras import ops

from deepkit.export import export

STANDARDIZE = (None, "batch", "moving")
INPUT_LAYOUTS = ("image", "blocks")


class _MinibatchStandardization(keras.layers.Layer):
    """Each feature minus its mean over the batch, over its standard deviation
    over the batch; a feature constant over the batch passes unchanged (the
    2012 code's ``T.switch(T.eq(std, 0), x, z)``). Built by `StructuredMLP`
    from its own arguments, never serialized on its own."""

    def call(self, inputs):
        # Shifted by the first example: a feature equal in every example has
        # exactly zero deviations (its float mean need not equal it exactly).
        deviations = inputs - inputs[:1]
        centred = deviations - ops.mean(deviations, axis=0, keepdims=True)
        variance = ops.mean(ops.square(centred), axis=0, keepdims=True)
        spread = variance > 0
        # The square root only where it is positive: a finite gradient everywhere.
        std = ops.sqrt(ops.where(spread, variance, 1.0))
        return ops.where(spread, centred / std, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


@export
class StructuredMLP(keras.Model):
    """The structured MLP of "Knowledge Matters": P1NN on every block, P2NN on top.

    The image is cut into its ``block_size`` × ``block_size`` blocks (64
    blocks of 8×8 pixels for a 64×64 Pentomino image), in row-major block
    order, the order of `deepkit.datasets.pentomino.to_blocks` and of the
    hints. **P1NN** (`p1nn`), one MLP with the same weights for every block,
    maps a block's pixels through ``p1nn_units`` hidden layers to
    ``block_classes`` outputs (the 11 hint classes: empty, or one of the 10
    shapes); its outputs are the model's ``"hints"`` output,
    ``[B, blocks, block_classes]``. **P2NN** (`p2nn`) reads the blocks'
    outputs concatenated block by block (``blocks · block_classes`` = 704
    features), optionally standardized per feature, through ``p2nn_units``
    hidden layers to one sigmoid unit, the ``"label"`` output ``[B, 1]``
    (1: the three objects have the same shape).

    The outputs are a dict, so losses and loss weights are given per output
    (``compile(loss={"hints": ..., "label": ...}, loss_weights={...})``);
    ``None`` for an output's loss trains without it. The two parts are
    sub-models, so a stage can freeze one (``model.p1nn.trainable = False``,
    then compile): the 2012 code trains P1NN on the hints, then P2NN on the
    label with P1NN frozen. SMLP-Hints (2012 code): ``p1nn_units=(2048,)``,
    ReLU, softmax; ``p2nn_units=(1024,)``, tanh; ``standardize="batch"``.
    SMLP-NoHints (ICLR code): ``p1nn_units=(256,)``,
    ``p1nn_output_activation="relu"``, ``p2nn_units=(2048,)``, ReLU,
    trained on the label only. Joint training (JMLR code): 512 ReLU, linear
    block outputs (``"linear"``: a hints loss with ``from_logits=True``),
    annealed hint weight (`deepkit.training.ScheduledLoss`).

    Args:
        p1nn_units: widths of P1NN's hidden layers, one layer each.
        p1nn_activation: activation of P1NN's hidden layers.
        p1nn_output_activation: activation of P1NN's ``block_classes``
            outputs (``"softmax"``: per-block class probabilities).
        p2nn_units: widths of P2NN's hidden layers, one layer each.
        p2nn_activation: activation of P2NN's hidden layers.
        standardize: how P2NN's inputs are standardized per feature: None
            (not at all); ``"batch"``, by the mean and standard deviation
            over each batch, in training and inference alike, features
            constant over the batch passed unchanged (the 2012 code, which
            also evaluated by batches: a prediction depends on the other
            examples of its batch, and a batch of one is not standardized);
            ``"moving"``, by a
            `keras.layers.BatchNormalization` without scale or offset (batch
            statistics in training, their moving averages in inference).
        p2nn_input_activation: an activation applied to P1NN's outputs as
            P2NN reads them, before the standardization (None: none; the
            JMLR code's joint model: ``"relu"`` on linear block outputs,
            which the hints loss reads as logits).
        block_size: pixels on a side of a block.
        block_classes: outputs of P1NN per block (11 hint classes).
        input_layout: ``"image"``: inputs are images ``[B, H, W]``, ``[B,
            H, W, 1]`` or flattened ``[B, H·W]`` (square), cut into blocks
            by the model;
            ``"blocks"``: inputs are already ``[B, blocks, block_size²]``
            (`deepkit.datasets.pentomino.to_blocks`, layout ``"blocks"``).
        kernel_regularizer: regularizer of every layer's kernel (the 2012
            code's L1 1e-6 and L2 1e-5: ``keras.regularizers.L1L2(1e-6, 1e-5)``).
        seed: seed of the initializers (Glorot uniform kernels, zero biases).
        **kwargs: base `Model` arguments (``name``, ``dtype``).

    Call arguments:
        inputs: images or blocks (see ``input_layout``).
        training: passed to the standardization.

    Returns:
        ``{"hints": [B, blocks, block_classes], "label": [B, 1]}``.

    Example:

    ```python
    data = deepkit.datasets.pentomino.generate(200, seed=0)
    model = StructuredMLP(p1nn_units=(64,), p2nn_units=(32,))
    model.compile(keras.optimizers.SGD(0.1),
                  loss={"hints": "sparse_categorical_crossentropy",
                        "label": "binary_crossentropy"},
                  loss_weights={"hints": 1.0, "label": 1.0})
    model.fit(data.images.astype("float32"),
              {"hints": data.hints, "label": data.labels}, epochs=1)
    ```

    Reference:
        Gulcehre, Bengio, "Knowledge Matters: Importance of Prior Information
        for Optimization", ICLR 2013, arXiv:1301.4083 (JMLR 17, 2016),
        section 4 (the structured MLP, P1NN and P2NN); the authors' code,
        ``caglar/structured_mlp`` (``structured_mlp.py``: the per-batch
        standardization) and ``caglar/kmatters``.
    """

    def __init__(
        self,
        p1nn_units=(2048,),
        p1nn_activation="relu",
        p1nn_output_activation="softmax",
        p2nn_units=(1024,),
        p2nn_activation="tanh",
        standardize=None,
        p2nn_input_activation=None,
        block_size=8,
        block_classes=11,
        input_layout="image",
        kernel_regularizer=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if standardize not in STANDARDIZE:
            raise ValueError(f"StructuredMLP: standardize must be one of {STANDARDIZE}, "
                             f"got {standardize!r}")
        if input_layout not in INPUT_LAYOUTS:
            raise ValueError(f"StructuredMLP: input_layout must be one of {INPUT_LAYOUTS}, "
                             f"got {input_layout!r}")
        self.p1nn_units = _widths("p1nn_units", p1nn_units)
        self.p2nn_units = _widths("p2nn_units", p2nn_units)
        self.p1nn_activation = p1nn_activation
        self.p1nn_output_activation = p1nn_output_activation
        self.p2nn_activation = p2nn_activation
        self.p2nn_input_activation = p2nn_input_activation
        self.standardize = standardize
        self.block_size = _positive("block_size", block_size)
        self.block_classes = _positive("block_classes", block_classes)
        self.input_layout = input_layout
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.seed = seed

        def dense(units, activation, offset, name):
            return keras.layers.Dense(
                units, activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(self._seed(offset)),
                kernel_regularizer=self.kernel_regularizer, name=name)

        p1nn = [dense(u, p1nn_activation, i, f"p1nn_hidden_{i}")
                for i, u in enumerate(self.p1nn_units)]
        p1nn.append(dense(self.block_classes, p1nn_output_activation, len(p1nn), "p1nn_output"))
        self.p1nn = keras.Sequential(p1nn, name="p1nn")
        p2nn = []
        if p2nn_input_activation is not None:
            p2nn.append(keras.layers.Activation(p2nn_input_activation, name="p2nn_input"))
        if standardize == "batch":
            p2nn.append(_MinibatchStandardization(name="p2nn_standardize"))
        elif standardize == "moving":
            p2nn.append(keras.layers.BatchNormalization(center=False, scale=False,
                                                        name="p2nn_standardize"))
        offset = 100
        p2nn += [dense(u, p2nn_activation, offset + i, f"p2nn_hidden_{i}")
                 for i, u in enumerate(self.p2nn_units)]
        p2nn.append(dense(1, "sigmoid", offset + len(self.p2nn_units), "p2nn_output"))
        self.p2nn = keras.Sequential(p2nn, name="p2nn")

    def _seed(self, offset):
        return None if self.seed is None else int(self.seed) + offset

    # -- shapes -------------------------------------------------------------
    def _grid(self, input_shape):
        """``(blocks, pixels per block, blocks per side)`` for ``input_shape``."""
        pixels = self.block_size * self.block_size
        if self.input_layout == "blocks":
            if len(input_shape) != 3 or input_shape[2] != pixels:
                raise ValueError(f"StructuredMLP(input_layout='blocks'): inputs must be "
                                 f"[B, blocks, {pixels}], got {tuple(input_shape)}")
            side = int(round(input_shape[1] ** 0.5))
            return input_shape[1], pixels, side
        if len(input_shape) == 2:
            side = int(round(input_shape[1] ** 0.5))
            if side * side != input_shape[1]:
                raise ValueError(f"StructuredMLP: flat inputs must hold a square image, "
                                 f"got {input_shape[1]} pixels")
            height = width = side
        elif len(input_shape) == 3 or (len(input_shape) == 4 and input_shape[3] == 1):
            height, width = input_shape[1], input_shape[2]
        else:
            raise ValueError(f"StructuredMLP: inputs must be images [B, H, W], [B, H, W, 1] "
                             f"or [B, H*W], got shape {tuple(input_shape)}")
        if height % self.block_size or width % self.block_size or height != width:
            raise ValueError(f"StructuredMLP: a square image whose side is a multiple of "
                             f"block_size={self.block_size} is needed, got {height}x{width}")
        side = height // self.block_size
        return side * side, pixels, side

    def build(self, input_shape):
        blocks, pixels, _ = self._grid(input_shape)
        self.num_blocks = int(blocks)
        self.p1nn.build((None, self.num_blocks, pixels))
        self.p2nn.build((None, self.num_blocks * self.block_classes))
        self.built = True

    # -- the pieces ---------------------------------------------------------
    def blocks(self, inputs):
        """``[B, H, W]`` or ``[B, H·W]`` images -> ``[B, blocks, block_size²]``,
        block ``b`` = row ``b // side``, column ``b % side``, pixels row-major
        (`deepkit.datasets.pentomino.to_blocks`)."""
        x = ops.cast(inputs, self.compute_dtype)
        blocks, pixels, side = self._grid(tuple(inputs.shape))
        if self.input_layout == "blocks":
            return x
        k = self.block_size
        x = ops.reshape(x, (-1, side, k, side, k))
        x = ops.transpose(x, (0, 1, 3, 2, 4))
        return ops.reshape(x, (-1, blocks, pixels))

    def call(self, inputs, training=None):
        hints = self.p1nn(self.blocks(inputs), training=training)
        features = ops.reshape(hints, (-1, self.num_blocks * self.block_classes))
        label = self.p2nn(features, training=training)
        return {"hints": hints, "label": label}

    def compute_output_shape(self, input_shape):
        blocks, _, _ = self._grid(input_shape)
        return {"hints": (input_shape[0], blocks, self.block_classes),
                "label": (input_shape[0], 1)}

    def get_config(self):
        config = super().get_config()
        config.update({
            "p1nn_units": list(self.p1nn_units),
            "p1nn_activation": self.p1nn_activation,
            "p1nn_output_activation": self.p1nn_output_activation,
            "p2nn_units": list(self.p2nn_units),
            "p2nn_activation": self.p2nn_activation,
            "standardize": self.standardize,
            "p2nn_input_activation": self.p2nn_input_activation,
            "block_size": self.block_size,
            "block_classes": self.block_classes,
            "input_layout": self.input_layout,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "seed": self.seed,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("kernel_regularizer") is not None:
            config["kernel_regularizer"] = keras.regularizers.deserialize(
                config["kernel_regularizer"])
        return cls(**config)


def _widths(name, units):
    if isinstance(units, int) and not isinstance(units, bool):
        units = (units,)
    units = tuple(units)
    if not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in units):
        raise ValueError(f"StructuredMLP: {name} must be positive integers, got {units!r}")
    return units


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"StructuredMLP: {name} must be a positive integer, got {value!r}")
    return value
