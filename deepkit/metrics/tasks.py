"""The success measure of the pathological RNN tasks: the fraction of sequences wrong.

Pascanu, Mikolov & Bengio (2013, section 5.1) call a task solved when fewer
than 1% of 10,000 fresh sequences are answered wrongly. What "wrong" means
follows the evaluation of the authors' code (`pascanur/trainingRNNs`,
``RNN.py``):

- regression (adding, multiplication): the squared error of the answer,
  summed over its outputs, exceeds 0.04;
- classification read at the last step (temporal order, 3-bit temporal
  order, random permutation): the argmax of the output is not the target;
- classification at every step (noiseless memorization): any step's argmax
  is not its target.

The authors' script itself stops only when the validation error falls below
0.0001% — none of its 10,000 sequences wrong; `task_solved` takes the
paper's 1% by default and the stricter bound as its argument.
"""

import keras
from keras import ops

from deepkit.export import export

# The paper's criterion: fewer than this fraction wrong ...
SOLVED_ERROR_RATE = 0.01
# ... on this many fresh sequences.
EVALUATION_SEQUENCES = 10000
# A regression answer is wrong when its squared error exceeds this.
REGRESSION_THRESHOLD = 0.04

KINDS = ("regression", "classification")
# The kind of answer of each task of deepkit.datasets.pathological.
TASK_KINDS = {
    "adding": "regression",
    "multiplication": "regression",
    "temporal_order": "classification",
    "temporal_order_3bit": "classification",
    "random_permutation": "classification",
    "noiseless_memorization": "classification",
}


def _labels(y_true, y_pred):
    """Integer class labels of `y_true`: sparse ids, `[..., 1]` ids, or one-hot."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape):
        if y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        else:  # one-hot (or soft) targets
            y_true = ops.argmax(y_true, axis=-1)
    return ops.cast(y_true, "int32")


def _step_weights(sample_weight, shape, dtype):
    """`sample_weight` broadcast to the per-element `shape` ([N, ...])."""
    if sample_weight is None:
        return ops.ones(shape, dtype=dtype)
    weights = ops.cast(ops.convert_to_tensor(sample_weight), dtype)
    while len(weights.shape) > len(shape) and weights.shape[-1] == 1:
        weights = ops.squeeze(weights, axis=-1)
    while len(weights.shape) < len(shape):
        weights = ops.expand_dims(weights, axis=-1)
    return ops.broadcast_to(weights, shape)


def _over_steps(fn, values):
    """Reduce `[N, ...]` to `[N]` with `fn` over every axis but the first."""
    if len(values.shape) == 1:
        return values
    return fn(values, axis=tuple(range(1, len(values.shape))))


def sequence_errors(y_true, y_pred, kind="classification", threshold=REGRESSION_THRESHOLD,
                    sample_weight=None):
    """Which sequences are answered wrongly, and how much each counts.

    Args:
        y_true: targets. Regression: values of `y_pred`'s shape (`[N, 1]`
            for adding; `[N]` with `y_pred` `[N, 1]` is accepted).
            Classification: class ids `[N]` or `[N, T]` (or `[..., 1]`), or
            one-hot targets of `y_pred`'s shape.
        y_pred: the model's answers: values, or class scores `[N, C]` /
            `[N, T, C]` (probabilities or logits: only the argmax matters).
        kind: "regression" or "classification".
        threshold: regression only: a sequence is wrong when the sum of its
            squared errors exceeds this.
        sample_weight: None, a weight per sequence `[N]`, or per step
            (`[N, T]` for per-step classification): steps of weight 0 are
            not checked; a sequence counts with the largest weight of its
            steps (0 when all are padding).

    Returns:
        `(wrong, weight)`: float `[N]` tensors, `wrong` 1.0 or 0.0.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = "float32"
    if kind == "regression":
        y_pred = ops.cast(y_pred, dtype)
        y_true = ops.cast(ops.convert_to_tensor(y_true), dtype)
        if len(y_true.shape) == len(y_pred.shape) - 1 and y_pred.shape[-1] == 1:
            y_true = ops.expand_dims(y_true, axis=-1)
        elements = ops.square(ops.subtract(y_true, y_pred))
    else:
        labels = _labels(y_true, y_pred)
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        elements = ops.cast(ops.not_equal(predicted, labels), dtype)
    weights = _step_weights(sample_weight, ops.shape(elements), dtype)
    checked = ops.multiply(elements, ops.cast(ops.greater(weights, 0.0), dtype))
    if kind == "regression":
        wrong = ops.greater(_over_steps(ops.sum, checked), threshold)
    else:
        wrong = ops.greater(_over_steps(ops.max, checked), 0.0)
    return ops.cast(wrong, dtype), _over_steps(ops.max, weights)


def task_solved(error_rate, threshold=SOLVED_ERROR_RATE):
    """Whether an error rate meets the paper's success criterion.

    Pascanu et al. (2013) count a run as a success when fewer than 1% of
    10,000 fresh sequences (`EVALUATION_SEQUENCES`) are wrong, as measured by
    `SequenceErrorRate` on a test set of `deepkit.datasets.pathological`.

    Args:
        error_rate: the fraction of sequences wrong (a number or a scalar
            tensor, e.g. `SequenceErrorRate().result()` or the value logged
            by `evaluate`).
        threshold: the success bound; the authors' script stops at 1e-6
            (no sequence of 10,000 wrong).

    Returns:
        True when `error_rate < threshold`.

    Example:

    ```python
    logs = model.evaluate(x_test, y_test, return_dict=True)
    task_solved(logs["sequence_error_rate"])
    ```

    Reference:
        Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent
        neural networks", ICML 2013, arXiv:1211.5063, section 5.1.
    """
    return bool(float(ops.convert_to_numpy(error_rate)) < threshold)


@export
class SequenceErrorRate(keras.metrics.Metric):
    """Fraction of sequences answered wrongly: the success measure of the pathological tasks.

    A regression answer (adding, multiplication) is wrong when its squared
    error, summed over the outputs, exceeds `threshold` (0.04); a
    classification answer when the argmax of the scores is not the target
    (temporal order, 3-bit temporal order, random permutation); with
    per-step targets `[N, T]` (noiseless memorization) when any step is
    wrong. The value is the (weighted) count of wrong sequences over all
    batches seen, divided by their (weighted) number — exact over batches of
    unequal sizes. Step weights (0 on padding) reach a metric only through
    `compile(weighted_metrics=...)`; the padded steps of
    `noiseless_memorization` have the "blank" target, so under `metrics=`
    they are checked too. A task is solved when the rate on 10,000 fresh
    sequences is below 1% (`task_solved`).

    Args:
        kind: "regression" or "classification", or a task name of
            `deepkit.datasets.pathological` ("adding", "temporal_order", ...),
            which stands for its kind.
        threshold: regression only: the squared error above which a
            sequence is wrong.
        name: the metric's name (logged as `sequence_error_rate`).
        dtype: the dtype of the sums.

    Example:

    ```python
    model.compile(optimizer="sgd", loss="mse",
                  metrics=[SequenceErrorRate("regression")])
    logs = model.evaluate(x_test, y_test, return_dict=True)
    task_solved(logs["sequence_error_rate"])
    ```

    Reference:
        Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent
        neural networks", ICML 2013, arXiv:1211.5063, section 5.1 (and
        ``RNN.py`` of `pascanur/trainingRNNs`); Hochreiter, Schmidhuber,
        "Long short-term memory", Neural Computation 9(8), 1997.
    """

    def __init__(self, kind="classification", threshold=REGRESSION_THRESHOLD,
                 name="sequence_error_rate", dtype=None):
        super().__init__(name=name, dtype=dtype)
        resolved = TASK_KINDS.get(kind, kind)
        if resolved not in KINDS:
            raise ValueError(
                f"SequenceErrorRate: kind must be one of {KINDS} or a task name "
                f"({', '.join(TASK_KINDS)}), got {kind!r}")
        threshold = float(threshold)
        if not threshold >= 0:
            raise ValueError(f"SequenceErrorRate: threshold must be >= 0, got {threshold}")
        self.kind = resolved
        self.threshold = threshold
        self._direction = "down"
        self.wrong = self.add_variable(shape=(), initializer="zeros", name="wrong")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        wrong, weight = sequence_errors(y_true, y_pred, self.kind, self.threshold,
                                        sample_weight)
        self.wrong.assign_add(ops.cast(ops.sum(ops.multiply(wrong, weight)), self.dtype))
        self.count.assign_add(ops.cast(ops.sum(weight), self.dtype))

    def result(self):
        return ops.divide_no_nan(self.wrong, self.count)

    def reset_state(self):
        self.wrong.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "threshold": self.threshold}
