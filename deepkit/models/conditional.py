"""ConditionalGatedMLP: the gated network of Bengio, Léonard, Courville 2013."""

import keras
from keras import ops

from deepkit.export import export
from deepkit.layers.stochastic import NoisyReLU, StochasticBinaryGate, reinforce_loss

GATES = (
    "straight_through",
    "straight_through_sigmoid",
    "stochastic_times_smooth",
    "reinforce",
    "noisy_rectifier",
)


@export
class ConditionalGatedMLP(keras.Model):
    """A main path switched on and off, unit by unit, by a stochastic gater.

    Bengio, Léonard, Courville 2013, Section 7 (MNIST): the gating path is
    affine → ``gater_units`` tanh → affine → ``units`` stochastic gates; the
    main path is affine → ``units`` linear units; the output is
    ``softmax(W (gate ⊙ main) + b)``. The gates are `StochasticBinaryGate`
    with the chosen estimator, or `NoisyReLU` for ``"noisy_rectifier"``.
    With ``"reinforce"`` the model adds the REINFORCE surrogate
    (`deepkit.layers.stochastic.reinforce_loss`) to its loss in
    `compute_loss`, the one place where the per-example loss is known; every
    other estimator trains with plain backpropagation.

    Args:
        units: width of the main path and number of gates (2000 in the paper).
        gater_units: width of the gater's tanh layer (400).
        num_classes: softmax outputs.
        gate: ``"straight_through"``, ``"straight_through_sigmoid"``,
            ``"stochastic_times_smooth"``, ``"reinforce"`` or
            ``"noisy_rectifier"``.
        sparsity_target: target fraction of gates on (0.1).
        sparsity_weight: weight of the KL sparsity penalty (binary gates) or
            of the L1 penalty (noisy rectifier).
        inference: test-time rule of the binary gates (see
            `StochasticBinaryGate`).
        threshold: threshold for ``inference="threshold"``.
        noise_stddev: noise of the noisy rectifier.
        max_norm: maximum norm of each unit's incoming weights in the gater
            and the main path (2.1 in the authors' launch files); None for no
            constraint.
        output_max_norm: the same for the softmax layer's weights. The
            authors' launch files set 2.1 on the gated layer only; their
            output layer (`StochasticSoftmax` 7764 in
            nicholas-leonard/delicious) has no max-norm. None for no
            constraint.
        input_dropout: dropout rate on the input, shared by the gater and
            the main path (one mask per example, as in Hinton et al.'s and
            Goodfellow et al.'s MNIST networks). Not in the paper, whose
            only noise is the gates' own; 0 (the default) leaves it out.
        reinforce_scale: scale of the REINFORCE surrogate.
        seed: seed for the gates' samples and the initializers.
        **kwargs: base `Model` arguments.

    Example:

    ```python
    model = ConditionalGatedMLP(units=2000, gater_units=400)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    ```

    Reference:
        Bengio, Léonard, Courville 2013, "Estimating or Propagating Gradients
        Through Stochastic Neurons for Conditional Computation",
        arXiv:1308.3432.
    """

    def __init__(
        self,
        units=2000,
        gater_units=400,
        num_classes=10,
        gate="straight_through",
        sparsity_target=0.1,
        sparsity_weight=0.1,
        inference="threshold",
        threshold=0.5,
        noise_stddev=1.0,
        max_norm=2.1,
        output_max_norm=2.1,
        reinforce_scale=1.0,
        input_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.units = int(units)
        self.gater_units = int(gater_units)
        self.num_classes = int(num_classes)
        self.gate = gate
        self.sparsity_target = float(sparsity_target)
        self.sparsity_weight = float(sparsity_weight)
        self.inference = inference
        self.threshold = float(threshold)
        self.noise_stddev = float(noise_stddev)
        self.max_norm = None if max_norm is None else float(max_norm)
        self.output_max_norm = None if output_max_norm is None else float(output_max_norm)
        self.reinforce_scale = float(reinforce_scale)
        self.input_dropout = float(input_dropout)
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout!r}")
        self.seed = seed

        def constraint(value):
            return None if value is None else keras.constraints.MaxNorm(value, axis=0)

        def glorot(scale=1.0, offset=0):
            return keras.initializers.VarianceScaling(
                scale=scale,
                mode="fan_avg",
                distribution="uniform",
                seed=None if seed is None else seed + offset,
            )

        self.dropout = (
            keras.layers.Dropout(
                self.input_dropout, seed=None if seed is None else seed + 5, name="input_dropout"
            )
            if self.input_dropout > 0
            else None
        )
        self.gater_hidden = keras.layers.Dense(
            self.gater_units,
            activation="tanh",
            kernel_initializer=glorot(1.0, 1),
            kernel_constraint=constraint(self.max_norm),
            name="gater_hidden",
        )
        # 4x the Glorot range for the sigmoid gates, as in the authors' code.
        self.gater_output = keras.layers.Dense(
            self.units,
            kernel_initializer=glorot(16.0, 2),
            kernel_constraint=constraint(self.max_norm),
            name="gater_output",
        )
        if gate == "noisy_rectifier":
            self.gates = NoisyReLU(
                stddev=self.noise_stddev, l1=self.sparsity_weight, seed=seed, name="gates"
            )
        else:
            self.gates = StochasticBinaryGate(
                estimator=gate,
                sparsity_target=self.sparsity_target,
                sparsity_weight=self.sparsity_weight,
                inference=inference,
                threshold=self.threshold,
                reinforce_scale=self.reinforce_scale,
                seed=seed,
                name="gates",
            )
        self.main = keras.layers.Dense(
            self.units,
            kernel_initializer=glorot(1.0, 3),
            kernel_constraint=constraint(self.max_norm),
            name="main",
        )
        self.classifier = keras.layers.Dense(
            self.num_classes,
            activation="softmax",
            kernel_initializer=glorot(1.0, 4),
            kernel_constraint=constraint(self.output_max_norm),
            name="classifier",
        )

    def build(self, input_shape):
        flat_shape = (input_shape[0], self._flat_dim(input_shape))
        self.gater_hidden.build(flat_shape)
        self.gater_output.build((input_shape[0], self.gater_units))
        self.gates.build((input_shape[0], self.units))
        self.main.build(flat_shape)
        self.classifier.build((input_shape[0], self.units))
        self.built = True

    @staticmethod
    def _flat_dim(input_shape):
        dim = 1
        for size in input_shape[1:]:
            dim *= size
        return dim

    def call(self, inputs, training=None):
        x = ops.reshape(inputs, (ops.shape(inputs)[0], -1))
        x = ops.cast(x, self.compute_dtype)
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        gates = self.gates(self.gater_output(self.gater_hidden(x)), training=training)
        return self.classifier(gates * self.main(x))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        if training and self.gate == "reinforce":
            surrogate = reinforce_loss(self, y, y_pred, sample_weight)
            if surrogate is not None:
                # Zero in value (the logged loss stays the task loss), the
                # REINFORCE estimate in gradient.
                surrogate = ops.cast(surrogate, loss.dtype)
                loss = loss + (surrogate - ops.stop_gradient(surrogate))
        return loss

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "gater_units": self.gater_units,
                "num_classes": self.num_classes,
                "gate": self.gate,
                "sparsity_target": self.sparsity_target,
                "sparsity_weight": self.sparsity_weight,
                "inference": self.inference,
                "threshold": self.threshold,
                "noise_stddev": self.noise_stddev,
                "max_norm": self.max_norm,
                "output_max_norm": self.output_max_norm,
                "reinforce_scale": self.reinforce_scale,
                "input_dropout": self.input_dropout,
                "seed": self.seed,
            }
        )
        return config
