"""HardParallelMixture: Collobert, Bengio & Bengio's hard mixture, trained by alternation."""

import math

import keras
import numpy as np
from keras import ops

from deepkit.export import export
from deepkit.layers import routing

COMBINE = ("hard", "soft")


def balanced_assignment(weights, capacity, order):
    """Greedy capacity-bounded assignment of examples to experts.

    Collobert et al.'s reassignment step: each example, taken in `order`,
    goes to the expert with the largest gater weight among those that hold
    fewer than `capacity` examples.

    Args:
        weights: ``[N, M]`` gater weights (any scores; larger is preferred).
        capacity: most examples one expert may take; ``capacity · M >= N``.
        order: a permutation of ``range(N)``, the order of assignment.

    Returns:
        int32 ``[N]``, the expert of each example.
    """
    weights = np.asarray(weights)
    num, experts = weights.shape
    if capacity * experts < num:
        raise ValueError(
            f"capacity {capacity} x {experts} experts holds fewer than the {num} examples"
        )
    ranked = np.argsort(-weights, axis=1, kind="stable")
    counts = np.zeros(experts, dtype=np.int64)
    assignment = np.empty(num, dtype=np.int32)
    for i in order:
        for m in ranked[i]:
            if counts[m] < capacity:
                assignment[i] = m
                counts[m] += 1
                break
    return assignment


def _arrays(x, y):
    """`(x, y)` numpy arrays from arrays or a PyDataset holding `.arrays`."""
    if y is None and hasattr(x, "arrays"):
        x = tuple(x.arrays)
    if y is None and isinstance(x, (tuple, list)):
        if len(x) > 2:
            raise ValueError(
                "HardParallelMixture.fit does not take sample weights; got "
                f"{len(x)} arrays (x, y, ...)"
            )
        if len(x) == 2:
            x, y = x
    if y is None:
        raise ValueError(
            "HardParallelMixture.fit needs the whole training set as arrays, "
            "fit(x, y), or a dataset exposing them as `.arrays`; got "
            f"{type(x).__name__} without targets"
        )
    return np.asarray(x), np.asarray(y)


class _ExpertPhase(keras.Model):
    """The experts alone, each on its own examples: ``[1, M, b, d] -> [1, M, b, C]``."""

    def __init__(self, mixture, **kwargs):
        kwargs.setdefault("name", "expert_phase")  # not "_expert_phase": TF scope names
        super().__init__(**kwargs)
        self.mixture = mixture

    def call(self, grouped):
        logits = self.mixture.grouped_expert_logits(grouped[0])
        return ops.expand_dims(ops.softmax(logits, axis=-1), 0)


class _GaterPhase(keras.Model):
    """The gater over fixed experts: ``(x, P[N, M, C]) -> Σ_m w_m(x) P_m``."""

    def __init__(self, mixture, **kwargs):
        kwargs.setdefault("name", "gater_phase")
        super().__init__(**kwargs)
        self.mixture = mixture

    def call(self, inputs):
        x, expert_probs = inputs
        weights = self.mixture.gater_weights(x)
        return ops.sum(ops.expand_dims(weights, -1) * expert_probs, axis=1)


@export
class HardParallelMixture(keras.Model):
    """A hard mixture of MLP experts, trained by Collobert et al.'s alternation.

    ``num_experts`` two-layer MLP experts and a gater MLP (softmax over the
    experts). `fit` runs the paper's algorithm; one Keras epoch is one round:

    1. round 0: the training set is split into ``num_experts`` random subsets
       of equal size; later rounds reassign every example (step 4 below);
    2. each expert trains on its own subset only (``expert_epochs`` passes),
       all experts stepping together on batches of ``batch_size`` examples
       *per expert*, as if each ran alone on its own machine;
    3. with the experts fixed, the gater trains (``gater_epochs`` passes) to
       minimize the negative log-likelihood of the soft mixture
       ``Σ_m w_m(x) p_m(y | x)`` on the whole training set (the experts'
       outputs are computed once per round);
    4. each example, in a random order, goes to the expert with the largest
       gater weight among those holding fewer than
       ``ceil(N / M · (1 + capacity_slack))`` examples;
    5. the next round starts at 2; Keras callbacks decide when to stop (the
       paper stops when the validation error rises: ``EarlyStopping``).

    After each round the logs hold the mixture's training loss and accuracy
    (from the gater phase), ``expert_loss``, ``reassigned`` (the fraction of
    examples that changed expert in step 4), ``largest_subset`` (as a
    fraction of an even share), and the compiled metrics on
    ``validation_data``. The assignment is a function of the gater's weights
    and the round's seed, so a run restored from a checkpoint of round r
    continues exactly. The two phases use fresh copies of the compiled
    optimizer each round (the gater's learning rate may differ).

    At inference (``call``), ``combine="hard"`` sends each example to its
    argmax expert only (conditional computation: tokens are gathered into
    per-expert buffers as in `GatedExperts`, with ``eval_capacity_factor``,
    by default ``num_experts``, so that nothing is dropped);
    ``combine="soft"`` returns the gater-weighted mixture of all experts.
    Outputs are class probabilities.

    Args:
        num_experts: number of experts ``M``.
        expert_units: hidden units of each expert.
        num_classes: classes of the softmax output.
        gater_units: hidden units of the gater (0: a linear gater).
        activation: the experts' hidden activation.
        gater_activation: the gater's hidden activation.
        combine: ``"hard"`` or ``"soft"``, the inference rule.
        capacity_slack: extra room per expert in step 4, as a fraction of
            an even share (Collobert et al.'s constant ``c``, relative).
        expert_epochs: passes over each expert's subset per round.
        gater_epochs: passes of the gater over the training set per round.
        gater_learning_rate: the gater's learning rate; None: the compiled
            optimizer's.
        eval_capacity_factor: capacity factor of the hard inference dispatch;
            None: ``num_experts`` (no example dropped).
        seed: seed of the initial split, the assignment order and the
            initializers.
        **kwargs: base `Model` arguments.

    Example:

    ```python
    model = HardParallelMixture(num_experts=4, expert_units=32, num_classes=10)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=5,
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
        capacity_slack=0.1,
        expert_epochs=1,
        gater_epochs=1,
        gater_learning_rate=None,
        eval_capacity_factor=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        if int(num_experts) < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")
        if float(capacity_slack) < 0:
            raise ValueError(f"capacity_slack must be >= 0, got {capacity_slack}")
        for name, value in (("expert_epochs", expert_epochs), ("gater_epochs", gater_epochs)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.num_experts = int(num_experts)
        self.expert_units = int(expert_units)
        self.num_classes = int(num_classes)
        self.gater_units = int(gater_units)
        self.activation_name = activation
        self.activation = keras.activations.get(activation)
        self.gater_activation = gater_activation
        self.combine = combine
        self.capacity_slack = float(capacity_slack)
        self.expert_epochs = int(expert_epochs)
        self.gater_epochs = int(gater_epochs)
        self.gater_learning_rate = (
            None if gater_learning_rate is None else float(gater_learning_rate)
        )
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

    def _rng(self, *keys):
        """The generator of one use (round, phase) drawn from the seed."""
        return np.random.default_rng([0 if self.seed is None else int(self.seed), *keys])

    def build(self, input_shape):
        dim = 1
        for size in input_shape[1:]:
            dim *= size
        self.input_dim = int(dim)
        experts, hidden, classes = self.num_experts, self.expert_units, self.num_classes

        def glorot(offset):
            # Keras counts the expert axis of an [M, d, h] kernel into both
            # fans; scale M makes each expert Glorot-uniform on its own fans
            # (as GatedExperts does).
            return keras.initializers.VarianceScaling(
                scale=experts, mode="fan_avg", distribution="uniform", seed=self._seed(offset)
            )

        self.expert_kernel_1 = self.add_weight(
            shape=(experts, dim, hidden), initializer=glorot(3), name="expert_kernel_1"
        )
        self.expert_bias_1 = self.add_weight(
            shape=(experts, hidden), initializer="zeros", name="expert_bias_1"
        )
        self.expert_kernel_2 = self.add_weight(
            shape=(experts, hidden, classes),
            initializer=glorot(4),
            name="expert_kernel_2",
        )
        self.expert_bias_2 = self.add_weight(
            shape=(experts, classes), initializer="zeros", name="expert_bias_2"
        )
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
        grouped = ops.cast(grouped, self.compute_dtype)
        hidden = self.activation(
            ops.matmul(grouped, self.expert_kernel_1) + self.expert_bias_1[:, None, :]
        )
        return ops.matmul(hidden, self.expert_kernel_2) + self.expert_bias_2[:, None, :]

    def all_expert_probs(self, inputs):
        """``[B, ...] -> [B, M, C]``: every expert on every example (dense)."""
        x = self._flat(inputs)
        hidden = self.activation(
            ops.einsum("bd,mdh->bmh", x, self.expert_kernel_1) + self.expert_bias_1[None]
        )
        logits = ops.einsum("bmh,mhc->bmc", hidden, self.expert_kernel_2) + self.expert_bias_2[None]
        return ops.softmax(logits, axis=-1)

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

    # -- Collobert et al.'s alternation --------------------------------------

    def capacity(self, num_examples):
        """Most examples one expert may hold in step 4."""
        return math.ceil(num_examples / self.num_experts * (1.0 + self.capacity_slack))

    def assignment(self, x, round_index, batch_size=256):
        """The expert of each training example in round `round_index`."""
        num = len(x)
        rng = self._rng(int(round_index))
        if round_index == 0:
            # Random subsets of equal size.
            return (rng.permutation(num) % self.num_experts).astype(np.int32)
        weights = self._predict_in_batches(self.gater_weights, x, batch_size)
        return balanced_assignment(weights, self.capacity(num), rng.permutation(num))

    def _predict_in_batches(self, fn, x, batch_size):
        outputs = []
        for start in range(0, len(x), batch_size):
            outputs.append(ops.convert_to_numpy(fn(x[start:start + batch_size])))
        return np.concatenate(outputs)

    def _expert_variables(self):
        return [self.expert_kernel_1, self.expert_bias_1, self.expert_kernel_2, self.expert_bias_2]

    def _fit_phase(self, phase, trainable, *args, **kwargs):
        """`phase.fit` with only the variables in `trainable` trainable."""
        keep = {id(v) for v in trainable}
        saved = [(v, v.trainable) for v in self.variables]
        for v, _ in saved:
            v.trainable = id(v) in keep
        try:
            return phase.fit(*args, **kwargs)
        finally:
            for v, flag in saved:
                v.trainable = flag

    def _phase_optimizer(self, learning_rate=None):
        config = keras.optimizers.serialize(self.optimizer)
        optimizer = keras.optimizers.deserialize(config)
        if learning_rate is not None:
            optimizer.learning_rate = learning_rate
        return optimizer

    def _train_experts(self, x, y, assignment, batch_size, rng):
        experts = self.num_experts
        members = [np.flatnonzero(assignment == m) for m in range(experts)]
        steps = max(1, max(math.ceil(len(idx) / batch_size) for idx in members))
        grouped = np.zeros((steps, experts, batch_size), dtype=np.int64)
        # An expert that the reassignment left without examples sits out the
        # round: its slots hold example 0 with weight 0.
        weights = np.ones((steps, experts, batch_size), dtype="float32")
        for m, idx in enumerate(members):
            if len(idx) == 0:
                weights[:, m, :] = 0.0
                continue
            order = rng.permutation(idx)
            need = steps * batch_size
            if need > len(order):  # pad with a random draw from the same subset
                order = np.concatenate([order, rng.choice(idx, need - len(order))])
            grouped[:, m, :] = order[:need].reshape(steps, batch_size)
        xg = x.reshape(len(x), -1)[grouped]  # [steps, M, b, d]
        yg = y[grouped]
        phase = _ExpertPhase(self)
        # The loss is averaged over all M·b examples of a step; times M, each
        # expert's gradient is that of its own batch of b examples.
        scale = float(experts)

        def loss(y_true, y_pred):
            return scale * keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

        phase.compile(optimizer=self._phase_optimizer(), loss=loss)
        history = self._fit_phase(
            phase, self._expert_variables(), xg, yg, sample_weight=weights,
            batch_size=1, epochs=self.expert_epochs, verbose=0, shuffle=False,
        )
        return history.history["loss"][-1] / scale

    def _train_gater(self, x, y, batch_size, rng):
        order = rng.permutation(len(x))
        x, y = x[order], y[order]
        probs = self._predict_in_batches(self.all_expert_probs, x, max(batch_size, 256))
        phase = _GaterPhase(self)
        phase.compile(
            optimizer=self._phase_optimizer(self.gater_learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        gater_variables = [v for layer in self.gater for v in layer.trainable_variables]
        history = self._fit_phase(
            phase, gater_variables, (x, probs), y,
            batch_size=batch_size, epochs=self.gater_epochs, verbose=0, shuffle=False,
        )
        return {k: v[-1] for k, v in history.history.items()}

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_data=None,
        initial_epoch=0,
        shuffle=True,
        validation_batch_size=None,
        **kwargs,
    ):
        """Collobert et al.'s alternation; one epoch is one round.

        Args:
            x, y: the whole training set as arrays (or a dataset exposing
                ``.arrays``, such as the recipe runner's).
            batch_size: examples per expert per step in the expert phase, and
                the gater's batch size; default: the dataset's, else 32.
            epochs: number of rounds.
            verbose: 0 silent; otherwise a line per round.
            callbacks: Keras callbacks, called once per round.
            validation_data: ``(x, y)`` evaluated after each round.
            initial_epoch: the round to start from.
            shuffle: accepted for compatibility; the order of every phase is
                drawn from (seed, round).
            validation_batch_size: batch size of the validation pass.
            **kwargs: other `Model.fit` arguments are not supported here.

        Returns:
            The `History` callback.
        """
        if kwargs:
            raise ValueError(
                f"HardParallelMixture.fit does not take {sorted(kwargs)}: each epoch is "
                "one round of the alternating algorithm over the whole training set"
            )
        if getattr(self, "optimizer", None) is None:
            raise ValueError("compile the HardParallelMixture with an optimizer before fit")
        if batch_size is None:
            batch_size = getattr(x, "batch_size", None) or 32
        x, y = _arrays(x, y)
        if len(x) < self.num_experts:
            raise ValueError(
                f"{len(x)} training examples cannot be split among {self.num_experts} experts"
            )
        if not self.built:
            self.build((None,) + tuple(x.shape[1:]))
        if validation_data is not None:
            validation_data = _arrays(validation_data, None)
        steps = math.ceil(len(x) / batch_size)
        forward_batch = max(batch_size, 256)  # forward passes only
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = keras.callbacks.CallbackList(
                callbacks,
                add_history=True,
                add_progbar=verbose not in (0, "auto"),
                verbose=verbose,
                epochs=epochs,
                # One "batch" per round, reported as the last of a pass over
                # the training set, so that progress bars count examples.
                steps=steps,
                model=self,
            )
        self.stop_training = False
        logs = {}
        callbacks.on_train_begin()
        initial_epoch = self._initial_epoch or initial_epoch
        # The last round's assignment, restored with the weights when a run
        # resumes (see save_own_variables), for the `reassigned` log.
        previous = self.last_assignment if initial_epoch > 0 else None
        if previous is not None and len(previous) != len(x):
            previous = None
        for round_index in range(initial_epoch, epochs):
            callbacks.on_epoch_begin(round_index)
            callbacks.on_train_batch_begin(0)
            assignment = self.assignment(x, round_index, forward_batch)
            counts = np.bincount(assignment, minlength=self.num_experts)
            rng = self._rng(int(round_index), 1)
            expert_loss = self._train_experts(x, y, assignment, batch_size, rng)
            gater_logs = self._train_gater(x, y, batch_size, rng)
            logs = dict(gater_logs)
            logs["expert_loss"] = float(expert_loss)
            logs["reassigned"] = (
                float(np.mean(assignment != previous)) if previous is not None else 1.0
            )
            logs["largest_subset"] = float(counts.max() * self.num_experts / len(x))
            previous = self.last_assignment = assignment
            callbacks.on_train_batch_end(steps - 1, logs)
            if validation_data is not None:
                val_logs = self.evaluate(
                    *validation_data, batch_size=validation_batch_size or forward_batch,
                    verbose=0, return_dict=True,
                )
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            callbacks.on_epoch_end(round_index, logs)
            if self.stop_training:
                break
        callbacks.on_train_end(logs)
        return self.history

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
                "capacity_slack": self.capacity_slack,
                "expert_epochs": self.expert_epochs,
                "gater_epochs": self.gater_epochs,
                "gater_learning_rate": self.gater_learning_rate,
                "eval_capacity_factor": self.eval_capacity_factor,
                "seed": self.seed,
            }
        )
        return config
