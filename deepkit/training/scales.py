"""Per-variable learning-rate scales for Keras optimizers (pylearn2's lr_scalers)."""

import numbers

import keras
from keras import ops

from deepkit import _keras_internals
from deepkit.export import export


def _check_scales(owner, scales):
    if scales is None:
        return {}
    if not isinstance(scales, dict):
        raise ValueError(
            f"{owner}: lr_scales must be a mapping from a layer name or variable path "
            f"to a number, got {type(scales).__name__} {scales!r}"
        )
    checked = {}
    for key, value in scales.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{owner}: lr_scales keys must be layer names or variable "
                             f"paths, got {key!r}")
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not value >= 0):
            raise ValueError(f"{owner}: lr_scales[{key!r}] must be a number >= 0, "
                             f"got {value!r}")
        checked[key] = float(value)
    return checked


def _matches(key, path):
    """Whether `key` is a run of whole segments of the variable path."""
    return f"/{key.strip('/')}/" in f"/{path}/"


@export
class ScaledSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` with a learning-rate factor per layer.

    The same update as Keras' SGD, with the learning rate of the variables
    named in `lr_scales` multiplied by their factor. Pylearn2 exposed this as
    each layer's ``W_lr_scale``/``b_lr_scale``; Pascanu et al. 2014 fine-tune
    a DOT(S)-RNN started from a trained DT(S)-RNN with a ten times smaller
    learning rate on the pre-trained layers (``lr_scales={"transition":
    0.1}``). A factor of 0 freezes the variables without recompiling.

    A key of `lr_scales` names a layer (``"transition"``) or a longer run of
    whole segments of a variable path
    (``"transition/deep_transition_cell/kernel"``): the path
    ``"model/transition/deep_transition_cell/kernel"`` matches both, but not
    ``"trans"``. A variable takes the factor of the longest key that matches
    its path, and 1 when none does. A key that matches no variable is an
    error when the optimizer is built, so that a misspelt layer name cannot
    silently train at the full rate. The factor multiplies the learning rate
    inside `update_step`, after gradient clipping, so the clipping norm is
    that of the unscaled gradients.

    Args:
        learning_rate: float, `LearningRateSchedule` or callable.
        momentum: float >= 0, as for `keras.optimizers.SGD`.
        nesterov: bool, as for `keras.optimizers.SGD`.
        lr_scales: dict from a layer name or a run of variable-path segments
            to a factor >= 0 (matching rule above).
        name: the optimizer's name, `"ScaledSGD"` by default.
        **kwargs: the base optimizer's arguments (`global_clipnorm`, ...).

    Example:

    ```python
    optimizer = ScaledSGD(0.25, momentum=0.9, global_clipnorm=1.0,
                          lr_scales={"transition": 0.1})
    model.compile(optimizer=optimizer, loss=...)
    ```

    Reference:
        Pascanu, Gulcehre, Cho, Bengio, "How to Construct Deep Recurrent
        Neural Networks", ICLR 2014, arXiv:1312.6026, Section 5.1.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, lr_scales=None,
                 name="ScaledSGD", **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         name=name, **kwargs)
        self.lr_scales = _check_scales(type(self).__name__, lr_scales)
        self._variable_lr_scales = None  # one factor per variable, set by build

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if not self.lr_scales:
            return
        factors, used = [], set()
        for variable in variables:
            keys = [key for key in self.lr_scales if _matches(key, variable.path)]
            key = max(keys, key=len) if keys else None
            used.add(key)
            factors.append(self.lr_scales[key] if keys else 1.0)
        unused = [key for key in self.lr_scales if key not in used]
        if unused:
            raise ValueError(
                f"{type(self).__name__}: lr_scales key(s) {unused} match no trainable "
                f"variable; the variables are: {', '.join(v.path for v in variables)}"
            )
        self._variable_lr_scales = factors

    def update_step(self, gradient, variable, learning_rate):
        factor = (self._variable_lr_scales[_keras_internals.variable_index(self, variable)]
                  if self._variable_lr_scales else 1.0)
        if factor != 1.0:
            learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), factor)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["lr_scales"] = dict(self.lr_scales)
        return config
