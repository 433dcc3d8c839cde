"""Collobert, Bengio & Bengio's alternating algorithm for hard mixtures, over ordinary fit calls."""

import math

import keras
import numpy as np
from keras import ops

from deepkit import _keras_internals
from deepkit.export import export
from deepkit.training.stages import Trainer


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


def _arrays(x, y, what="the training set"):
    """`(x, y)` numpy arrays from arrays or a dataset holding `.arrays`
    (`deepkit.datasets.EpochShuffledArrays`)."""
    if y is None and hasattr(x, "arrays"):
        x = tuple(x.arrays)
    if y is None and isinstance(x, (tuple, list)):
        if len(x) > 2:
            raise ValueError(f"Alternation.fit does not take sample weights; got {len(x)} "
                             f"arrays (x, y, ...) for {what}")
        if len(x) == 2:
            x, y = x
    if y is None:
        raise ValueError(f"Alternation.fit needs {what} as arrays, fit(model, x, y), or a "
                         "dataset exposing them as `.arrays` (EpochShuffledArrays); got "
                         f"{type(x).__name__} without targets")
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


def _predict_in_batches(fn, x, batch_size):
    outputs = []
    for start in range(0, len(x), batch_size):
        outputs.append(ops.convert_to_numpy(fn(x[start:start + batch_size])))
    return np.concatenate(outputs)


def _fit_phase(model, phase, trainable, *args, **kwargs):
    """`phase.fit` with only the variables in `trainable` trainable."""
    keep = {id(v) for v in trainable}
    saved = [(v, v.trainable) for v in model.variables]
    for v, _ in saved:
        v.trainable = id(v) in keep
    try:
        return phase.fit(*args, **kwargs)
    finally:
        for v, flag in saved:
            v.trainable = flag


@export
class Alternation(Trainer):
    """Collobert et al.'s alternating algorithm, as a trainer of a `HardParallelMixture`.

    ``Alternation(...).fit(model, x, y, epochs=..., callbacks=...)`` trains
    a compiled `deepkit.models.HardParallelMixture`; one Keras epoch is one
    round, and each phase of a round is an ordinary `fit` call on a small
    model that shares the mixture's weights:

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
       ``ceil(N / M · (1 + capacity_slack))`` examples (`balanced_assignment`);
    5. the next round starts at 2; Keras callbacks decide when to stop (the
       paper stops when the validation error rises: ``EarlyStopping``).

    After each round the logs hold the mixture's training loss and accuracy
    (from the gater phase), ``expert_loss``, ``reassigned`` (the fraction of
    examples that changed expert in step 4), ``largest_subset`` (as a
    fraction of an even share), and the compiled metrics on
    ``validation_data``. The assignment is a function of the gater's weights
    and the round's seed, so a run restored from a checkpoint of round r
    (`ExactBackupAndRestore`) continues exactly. The two phases use fresh
    copies of the model's compiled optimizer each round (the gater's
    learning rate may differ). The phases' loss is the negative
    log-likelihood of the class (sparse categorical cross-entropy), the
    paper's criterion, whatever loss the mixture was compiled with; the
    compiled metrics are those reported on validation data.

    It is the `trainer` of a `deepkit.training.Stage`, and in recipes
    ``fit: {trainer: {Alternation: {...}}}``.

    Args:
        expert_epochs: passes over each expert's subset per round.
        gater_epochs: passes of the gater over the training set per round.
        capacity_slack: extra room per expert in step 4, as a fraction of
            an even share (Collobert et al.'s constant ``c``, relative).
        gater_learning_rate: the gater's learning rate; None: the compiled
            optimizer's.
        seed: seed of the initial split, the assignment order and the
            phases' example order.

    Example:

    ```python
    model = HardParallelMixture(num_experts=4, expert_units=32, num_classes=10, seed=1)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    Alternation(expert_epochs=2, seed=1).fit(
        model, x_train, y_train, batch_size=32, epochs=20,
        validation_data=(x_valid, y_valid),
        callbacks=[keras.callbacks.EarlyStopping("val_accuracy", mode="max", patience=3)])
    ```

    Reference:
        Collobert, Bengio, Bengio 2002, "A Parallel Mixture of SVMs for Very
        Large Scale Problems", Neural Computation 14(5), section 2; "Scaling
        large learning problems with hard parallel mixtures" (IJPRAI 2003).
    """

    def __init__(self, expert_epochs=1, gater_epochs=1, capacity_slack=0.1,
                 gater_learning_rate=None, seed=None):
        for name, value in (("expert_epochs", expert_epochs), ("gater_epochs", gater_epochs)):
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"Alternation: {name} must be an integer >= 1, got {value!r}")
        if float(capacity_slack) < 0:
            raise ValueError(f"Alternation: capacity_slack must be >= 0, got {capacity_slack}")
        if gater_learning_rate is not None and float(gater_learning_rate) <= 0:
            raise ValueError("Alternation: gater_learning_rate must be > 0, got "
                             f"{gater_learning_rate}")
        self.expert_epochs = int(expert_epochs)
        self.gater_epochs = int(gater_epochs)
        self.capacity_slack = float(capacity_slack)
        self.gater_learning_rate = (None if gater_learning_rate is None
                                    else float(gater_learning_rate))
        self.seed = seed

    def get_config(self):
        return {"expert_epochs": self.expert_epochs, "gater_epochs": self.gater_epochs,
                "capacity_slack": self.capacity_slack,
                "gater_learning_rate": self.gater_learning_rate, "seed": self.seed}

    # -- the pieces of a round ----------------------------------------------

    def _rng(self, *keys):
        """The generator of one use (round, phase) drawn from the seed."""
        return np.random.default_rng([0 if self.seed is None else int(self.seed), *keys])

    def capacity(self, model, num_examples):
        """Most examples one expert may hold in step 4."""
        return math.ceil(num_examples / model.num_experts * (1.0 + self.capacity_slack))

    def assignment(self, model, x, round_index, batch_size=256):
        """The expert of each training example in round `round_index`."""
        num = len(x)
        rng = self._rng(int(round_index))
        if round_index == 0:
            # Random subsets of equal size.
            return (rng.permutation(num) % model.num_experts).astype(np.int32)
        weights = _predict_in_batches(model.gater_weights, x, batch_size)
        return balanced_assignment(weights, self.capacity(model, num), rng.permutation(num))

    @staticmethod
    def _phase_optimizer(model, learning_rate=None):
        optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
        if learning_rate is not None:
            optimizer.learning_rate = learning_rate
        return optimizer

    def train_experts(self, model, x, y, assignment, batch_size, rng):
        """Step 2: each expert on its own examples; returns the mean expert loss."""
        experts = model.num_experts
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
        phase = _ExpertPhase(model)
        # The loss is averaged over all M·b examples of a step; times M, each
        # expert's gradient is that of its own batch of b examples.
        scale = float(experts)

        def loss(y_true, y_pred):
            # On rows [M·b, C], reshaped back to [1, M, b]: the same numbers,
            # and Keras 3.15's torch backend fails in the backward pass of its
            # sparse cross-entropy on 4-D outputs ("grad_input must be contiguous").
            classes = ops.shape(y_pred)[-1]
            per_row = keras.losses.sparse_categorical_crossentropy(
                ops.reshape(y_true, (-1,)), ops.reshape(y_pred, (-1, classes))
            )
            return scale * ops.reshape(per_row, ops.shape(y_pred)[:-1])

        phase.compile(optimizer=self._phase_optimizer(model), loss=loss)
        history = _fit_phase(model, phase, model.expert_variables, xg, yg,
                             sample_weight=weights, batch_size=1, epochs=self.expert_epochs,
                             verbose=0, shuffle=False)
        return history.history["loss"][-1] / scale

    def train_gater(self, model, x, y, batch_size, rng):
        """Step 3: the gater on the soft mixture of fixed experts; returns its logs."""
        order = rng.permutation(len(x))
        x, y = x[order], y[order]
        probs = _predict_in_batches(model.all_expert_probs, x, max(batch_size, 256))
        phase = _GaterPhase(model)
        phase.compile(optimizer=self._phase_optimizer(model, self.gater_learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = _fit_phase(model, phase, model.gater_variables, (x, probs), y,
                             batch_size=batch_size, epochs=self.gater_epochs, verbose=0,
                             shuffle=False)
        return {k: v[-1] for k, v in history.history.items()}

    # -- the rounds -----------------------------------------------------------

    def fit(self, model, x=None, y=None, batch_size=None, epochs=1, verbose="auto",
            callbacks=None, validation_data=None, initial_epoch=0, shuffle=True,
            validation_batch_size=None, **kwargs):
        """Run the rounds; the arguments are `Model.fit`'s, `model` first.

        Args:
            model: a compiled `HardParallelMixture`.
            x, y: the whole training set as arrays (or a dataset exposing
                ``.arrays``, such as `EpochShuffledArrays`).
            batch_size: examples per expert per step in the expert phase, and
                the gater's batch size; default: the dataset's, else 32.
            epochs: number of rounds.
            verbose: 0 silent; otherwise a progress line per round.
            callbacks: Keras callbacks, called once per round.
            validation_data: ``(x, y)`` evaluated after each round.
            initial_epoch: the round to start from (a checkpoint restored
                by `ExactBackupAndRestore` sets it, as with `Model.fit`).
            shuffle: accepted for compatibility; the order of every phase is
                drawn from (seed, round).
            validation_batch_size: batch size of the validation pass.
            **kwargs: other `Model.fit` arguments have no meaning for a round
                over the whole training set and are refused.

        Returns:
            The `History` callback.
        """
        if kwargs:
            raise ValueError(f"Alternation.fit does not take {sorted(kwargs)}: each epoch is "
                             "one round of the alternating algorithm over the whole training "
                             "set")
        for method in ("gater_weights", "grouped_expert_logits", "all_expert_probs"):
            if not callable(getattr(model, method, None)):
                raise ValueError("Alternation trains a HardParallelMixture (a model with "
                                 f"{method}); got {type(model).__name__}")
        if getattr(model, "optimizer", None) is None:
            raise ValueError("compile the HardParallelMixture with an optimizer before "
                             "Alternation.fit")
        if batch_size is None:
            batch_size = getattr(x, "batch_size", None) or 32
        x, y = _arrays(x, y)
        if len(x) < model.num_experts:
            raise ValueError(f"{len(x)} training examples cannot be split among "
                             f"{model.num_experts} experts")
        if not model.built:
            model.build((None,) + tuple(x.shape[1:]))
        if validation_data is not None:
            validation_data = _arrays(validation_data, None, "validation_data")
        steps = math.ceil(len(x) / batch_size)
        forward_batch = max(batch_size, 256)  # forward passes only
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = keras.callbacks.CallbackList(
                callbacks, add_history=True, add_progbar=verbose not in (0, "auto"),
                verbose=verbose, epochs=epochs,
                # One "batch" per round, reported as the last of a pass over
                # the training set, so that progress bars count examples.
                steps=steps, model=model)
        model.stop_training = False
        logs = {}
        _keras_internals.set_initial_epoch(model, None)
        callbacks.on_train_begin()
        # A checkpoint restored in on_train_begin sets the first round.
        initial_epoch = _keras_internals.initial_epoch(model) or initial_epoch
        # The last round's assignment, restored with the weights when a run
        # resumes (see HardParallelMixture.save_own_variables).
        previous = model.last_assignment if initial_epoch > 0 else None
        if previous is not None and len(previous) != len(x):
            previous = None
        for round_index in range(initial_epoch, epochs):
            callbacks.on_epoch_begin(round_index)
            callbacks.on_train_batch_begin(0)
            assignment = self.assignment(model, x, round_index, forward_batch)
            counts = np.bincount(assignment, minlength=model.num_experts)
            rng = self._rng(int(round_index), 1)
            expert_loss = self.train_experts(model, x, y, assignment, batch_size, rng)
            logs = dict(self.train_gater(model, x, y, batch_size, rng))
            logs["expert_loss"] = float(expert_loss)
            logs["reassigned"] = (float(np.mean(assignment != previous))
                                  if previous is not None else 1.0)
            logs["largest_subset"] = float(counts.max() * model.num_experts / len(x))
            previous = model.last_assignment = assignment
            callbacks.on_train_batch_end(steps - 1, logs)
            if validation_data is not None:
                val_logs = model.evaluate(*validation_data,
                                          batch_size=validation_batch_size or forward_batch,
                                          verbose=0, return_dict=True)
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            callbacks.on_epoch_end(round_index, logs)
            if model.stop_training:
                break
        callbacks.on_train_end(logs)
        return model.history


def fit_alternating(model, x=None, y=None, *, expert_epochs=1, gater_epochs=1,
                    capacity_slack=0.1, gater_learning_rate=None, seed=None, **fit_kwargs):
    """`Alternation(...).fit(model, x, y, **fit_kwargs)` in one call; see `Alternation`.

    Example:

    ```python
    fit_alternating(model, x_train, y_train, expert_epochs=2, seed=1,
                    batch_size=32, epochs=10)
    ```
    """
    trainer = Alternation(expert_epochs, gater_epochs, capacity_slack, gater_learning_rate, seed)
    return trainer.fit(model, x, y, **fit_kwargs)
