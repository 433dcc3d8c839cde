"""HardParallelMixture: Collobert, Bengio & Bengio's hard mixture of MLP experts."""

import keras
import numpy as np
from keras import ops

from deepkit.export import export
from deepkit.layers import routing
from deepkit.layers.expert_mlp import ExpertMLP

COMBINE = ("hard", "soft")
# Training settings that older versions kept in the model's config; they
# belong to `deepkit.training.Alternation` now and are ignored on load.
_TRAINING_KEYS = ("capacity_slack", "expert_epochs", "gater_epochs", "gater_learning_rate")


@export
class HardParallelMixture(keras.Model):
    """A hard mixture of MLP experts: a gater sends each example to one expert.

    ``num_experts`` two-layer MLP experts (one `ExpertMLP`, ``experts``) and a
    gater MLP (softmax over the experts). The model defines the architecture and inference; how it is
    trained is up to the caller:

    - `deepkit.training.Alternation` (or `fit_alternating`) runs Collobert
      et al.'s algorithm: experts trained on their own subsets, the gater
      trained on the soft mixture with the experts fixed, examples
      reassigned under a capacity bound, one Keras epoch per round;
    - ordinary `fit` trains the model end to end on its compiled loss, as
      any Keras model (with ``combine="hard"`` the argmax routing passes no
      gradient to the gater; ``combine="soft"`` trains both).

    At inference (``call``), ``combine="hard"`` sends each example to its
    argmax expert only (conditional computation: examples are gathered into
    per-expert buffers as in `GatedExperts`, with ``eval_capacity_factor``,
    by default ``num_experts``, so that nothing is dropped);
    ``combine="soft"`` returns the gater-weighted mixture of all experts.
    Outputs are class probabilities.

    `last_assignment` holds the expert of each training example after the
    last round of `Alternation` (None before); it is saved with the weights,
    so a resumed run compares its next reassignment with it.

    Args:
        num_experts: number of experts ``M``.
        expert_units: hidden units of each expert.
        num_classes: classes of the softmax output.
        gater_units: hidden units of the gater (0: a linear gater).
        activation: the experts' hidden activation.
        gater_activation: the gater's hidden activation.
        combine: ``"hard"`` or ``"soft"``, the inference rule.
        eval_capacity_factor: capacity factor of the hard inference dispatch;
            None: ``num_experts`` (no example dropped).
        seed: seed of the initializers.
        **kwargs: base `Model` arguments.

    Example:

    ```python
    model = HardParallelMixture(num_experts=4, expert_units=32, num_classes=10)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    Alternation(expert_epochs=2, seed=1).fit(
        model, x_train, y_train, batch_size=32, epochs=5,
        validation_data=(x_valid, y_valid))
    ```

    Reference:
        Collobert, Bengio, Bengio 2002, "A Parallel Mixture of SVMs for Very
        Large Scale Problems", Neural Computation 14(5), and "Scaling large
        learning problems with hard parallel mixtures" (IJPRAI 2003).
    """

    def __init__(
        self,
        num_experts=10,
        expert_units=200,
        num_classes=10,
        gater_units=50,
        activation="relu",
        gater_activation="tanh",
        combine="hard",
        eval_capacity_factor=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        if int(num_experts) < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")
        self.num_experts = int(num_experts)
        self.expert_units = int(expert_units)
        self.num_classes = int(num_classes)
        self.gater_units = int(gater_units)
        self.activation_name = activation
        self.activation = keras.activations.get(activation)
        self.gater_activation = gater_activation
        self.combine = combine
        self.eval_capacity_factor = (
            float(self.num_experts) if eval_capacity_factor is None else float(eval_capacity_factor)
        )
        self.seed = seed
        gater = []
        if self.gater_units:
            gater.append(
                keras.layers.Dense(
                    self.gater_units,
                    activation=gater_activation,
                    kernel_initializer=keras.initializers.GlorotUniform(self._seed(1)),
                    name="gater_hidden",
                )
            )
        gater.append(
            keras.layers.Dense(
                self.num_experts,
                kernel_initializer=keras.initializers.GlorotUniform(self._seed(2)),
                name="gater_output",
            )
        )
        self.gater = gater
        self.last_assignment = None

    def _seed(self, offset):
        return None if self.seed is None else int(self.seed) + offset

    def build(self, input_shape):
        dim = 1
        for size in input_shape[1:]:
            dim *= size
        self.input_dim = int(dim)
        # Built here, not in __init__: unseeded initializers draw their seeds
        # when constructed, and the experts' come after the gater's.
        self.experts = ExpertMLP(
            self.num_experts, self.expert_units, self.num_classes,
            activation=self.activation_name,
            kernel_initializer=keras.initializers.GlorotUniform(self._seed(3)),
            output_kernel_initializer=keras.initializers.GlorotUniform(self._seed(4)),
            dtype=self.dtype_policy, name="experts")
        self.experts.build((self.num_experts, None, self.input_dim))
        width = dim
        for layer in self.gater:
            layer.build((input_shape[0], width))
            width = layer.units
        self.built = True

    # -- the pieces ---------------------------------------------------------

    def _flat(self, inputs):
        x = ops.reshape(inputs, (ops.shape(inputs)[0], -1))
        return ops.cast(x, self.compute_dtype)

    def gater_weights(self, inputs):
        """``[B, ...] -> [B, M]``, the gater's softmax weights."""
        h = self._flat(inputs)
        for layer in self.gater:
            h = layer(h)
        return ops.softmax(h, axis=-1)

    def grouped_expert_logits(self, grouped):
        """``[M, b, d] -> [M, b, C]``: expert m on the m-th group only."""
        return self.experts(ops.cast(grouped, self.compute_dtype))

    def all_expert_probs(self, inputs):
        """``[B, ...] -> [B, M, C]``: every expert on every example (dense)."""
        return ops.softmax(self.experts.call_all(self._flat(inputs)), axis=-1)

    def call(self, inputs, training=None):
        weights = self.gater_weights(inputs)
        if self.combine == "soft":
            probs = self.all_expert_probs(inputs)
            return ops.sum(ops.expand_dims(weights, -1) * probs, axis=1)
        x = self._flat(inputs)
        num_tokens = x.shape[0]
        if num_tokens is None:
            num_tokens = ops.shape(x)[0]
        expert_index = ops.expand_dims(ops.cast(ops.argmax(weights, axis=-1), "int32"), -1)
        capacity = routing.expert_capacity(
            num_tokens, self.num_experts, self.eval_capacity_factor, 1
        )
        gates = ops.ones(ops.shape(expert_index), dtype=self.compute_dtype)
        logits, _ = routing.run_in_expert_buffers(
            x, expert_index, gates, self.num_experts, capacity, self.grouped_expert_logits
        )
        # A dropped example (only with eval_capacity_factor < num_experts)
        # has zero logits: the uniform distribution.
        return ops.softmax(logits, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    @property
    def expert_variables(self):
        """The experts' weights (what the expert phase of a round trains)."""
        return list(self.experts.weights)

    @property
    def gater_variables(self):
        """The gater's weights (what the gater phase of a round trains)."""
        return [v for layer in self.gater for v in layer.trainable_variables]

    def save_own_variables(self, store):
        """The weights, plus the last round's assignment when there is one.

        A checkpoint taken after round r then carries what round r + 1
        compares its reassignment with, so a resumed run logs the same
        ``reassigned`` fraction as an uninterrupted one.
        """
        super().save_own_variables(store)
        if self.last_assignment is not None:
            store["last_assignment"] = np.asarray(self.last_assignment, dtype=np.int32)

    def load_own_variables(self, store):
        keys = list(store.keys())
        self.last_assignment = None
        if "last_assignment" in keys:
            self.last_assignment = np.asarray(store["last_assignment"], dtype=np.int32)
            store = {key: store[key] for key in keys if key != "last_assignment"}
        super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "expert_units": self.expert_units,
                "num_classes": self.num_classes,
                "gater_units": self.gater_units,
                "activation": self.activation_name,
                "gater_activation": self.gater_activation,
                "combine": self.combine,
                "eval_capacity_factor": self.eval_capacity_factor,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = {k: v for k, v in config.items() if k not in _TRAINING_KEYS}
        return cls(**config)
