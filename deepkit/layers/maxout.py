"""Maxout layers: one affine map to `units * pieces` outputs, then a max.

Goodfellow, Warde-Farley, Mirza, Courville, Bengio, "Maxout Networks",
ICML 2013, arXiv:1302.4389, equation (1):

    h_i(x) = max_{j in [1, k]} z_ij,   z_ij = x^T W_{..ij} + b_ij

with `units` outputs h_i and `pieces` = k linear pieces per unit.

Column layout. Both layers compute every z_ij with ONE matrix product (or one
convolution) against a kernel with `units * pieces` columns. For
non-overlapping pools (the default) the columns are *piece-major*: column
`p * units + u` is piece `p` of unit `u`, so the max is

    ops.max(ops.reshape(z, (..., pieces, units)), axis=-2)

an elementwise max of `pieces` contiguous blocks of `units` values. That
vectorizes across units in the forward and the backward pass; the unit-major
order of pylearn2 (column `u * pieces + p`, a max over a trailing axis of
length `pieces`) measured 10-25% slower per train step for the PI-MNIST
model on this CPU, on both TensorFlow and JAX (`benchmarks/maxout.py`).
The two orders describe the same family of functions (a fixed permutation of
columns; initializers draw columns i.i.d. and `max_norm` acts per column), so
the choice only matters when importing weights: pylearn2's
`W[:, u * pieces + p]` is our `kernel[:, p * units + u]`.
"""

import numbers

import keras
import numpy as np
from keras import ops

from deepkit.export import export


def _positive_int(layer, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _int_pair(layer, name, value):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"{layer}: {name} must be a positive integer or a pair of them, "
                f"got {value!r}"
            )
        return tuple(_positive_int(layer, name, v) for v in value)
    return (_positive_int(layer, name, value),) * 2


def _max_norm(layer, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(
            f"{layer}: max_norm must be None or a positive number, got {value!r}"
        )
    return float(value)


def _bool(layer, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{layer}: {name} must be True or False, got {value!r}")
    return bool(value)


def _kernel_constraint(layer, max_norm, kernel_constraint, norm_axes):
    if max_norm is not None and kernel_constraint is not None:
        raise ValueError(
            f"{layer}: pass either max_norm or kernel_constraint, not both "
            f"(max_norm={max_norm!r}, kernel_constraint={kernel_constraint!r})"
        )
    if max_norm is not None:
        return keras.constraints.MaxNorm(max_value=max_norm, axis=norm_axes)
    return keras.constraints.get(kernel_constraint)


class _MaxoutBase(keras.layers.Layer):
    """Weights and configuration shared by `Maxout` and `MaxoutConv2D`."""

    def _init_weights_args(
        self,
        use_bias,
        kernel_initializer,
        bias_initializer,
        kernel_regularizer,
        bias_regularizer,
        kernel_constraint,
        bias_constraint,
    ):
        name = type(self).__name__
        self.use_bias = _bool(name, "use_bias", use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def _add_weights(self, kernel_shape, columns, constraint):
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(columns,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    def _weights_config(self):
        ser = keras.saving.serialize_keras_object
        return {
            "max_norm": self.max_norm,
            "use_bias": self.use_bias,
            "kernel_initializer": ser(self.kernel_initializer),
            "bias_initializer": ser(self.bias_initializer),
            "kernel_regularizer": ser(self.kernel_regularizer),
            "bias_regularizer": ser(self.bias_regularizer),
            "activity_regularizer": ser(self.activity_regularizer),
            "kernel_constraint": ser(self.kernel_constraint),
            "bias_constraint": ser(self.bias_constraint),
        }


@export
class Maxout(_MaxoutBase):
    """Maxout units: `h_u = max_p (x W + b)[u, p]` over `pieces` affine pieces.

    One affine map to `units * pieces` columns (a single `(input_dim,
    units * pieces)` kernel, so the hot path is one matrix product), then the
    maximum over each unit's pieces (Goodfellow et al. 2013, equation 1). The
    last axis of the input holds the features; any leading axes are kept.

    With the default disjoint pools, column `p * units + u` of the kernel is
    piece `p` of unit `u` (piece-major; see the module docstring for why).
    The gradient of the max reaches only the winning piece of each unit (on
    an exact tie, TensorFlow and JAX split it between the tied pieces).
    With overlapping pools (`pool_stride < pieces`), unit `u` takes the max of
    the `pieces` consecutive columns starting at `u * pool_stride`, and the
    kernel has `(units - 1) * pool_stride + pieces` columns (pylearn2's
    `Maxout(pool_stride=...)`).

    Args:
        units: positive int, the number of maxout units (output features).
        pieces: positive int, the number of linear pieces per unit (k in the
            paper).
        max_norm: None or a positive float. pylearn2's `max_col_norm`: after
            every optimizer update, each column of the kernel (the incoming
            weight vector of one piece, of length `input_dim`; there are
            `units * pieces` of them) whose L2 norm exceeds `max_norm` is
            rescaled to norm `max_norm`. Implemented as
            `keras.constraints.MaxNorm(max_norm, axis=0)`, which Keras applies
            after each update; the bias is not constrained. The paper's
            PI-MNIST model uses 1.9365.
        min_zero: bool, whether a constant zero joins each max, i.e.
            `h_u = max(0, max_p z_up)` (pylearn2's `min_zero`).
        pool_stride: None or a positive int no larger than `pieces`: the
            distance between the first columns of consecutive pools. None
            means `pieces` (disjoint pools).
        use_bias: bool, whether the affine map has a bias (one per column).
        kernel_initializer: initializer for the kernel. The paper's PI-MNIST
            model draws uniformly from [-0.005, 0.005].
        bias_initializer: initializer for the bias.
        kernel_regularizer: regularizer for the kernel.
        bias_regularizer: regularizer for the bias.
        activity_regularizer: regularizer for the output.
        kernel_constraint: constraint for the kernel; cannot be combined with
            `max_norm`.
        bias_constraint: constraint for the bias.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a tensor of shape `(..., input_dim)`.

    Returns:
        A tensor of shape `(..., units)`.

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dropout(0.2),
        Maxout(240, pieces=5, max_norm=1.9365),
        keras.layers.Dropout(0.5),
        Maxout(240, pieces=5, max_norm=1.9365),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])
    ```

    Reference:
        Goodfellow, Warde-Farley, Mirza, Courville, Bengio, "Maxout Networks",
        ICML 2013, arXiv:1302.4389.
    """

    def __init__(
        self,
        units,
        pieces,
        max_norm=None,
        min_zero=False,
        pool_stride=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = _positive_int("Maxout", "units", units)
        self.pieces = _positive_int("Maxout", "pieces", pieces)
        self.max_norm = _max_norm("Maxout", max_norm)
        self.min_zero = _bool("Maxout", "min_zero", min_zero)
        self.pool_stride = None
        if pool_stride is not None:
            self.pool_stride = _positive_int("Maxout", "pool_stride", pool_stride)
            if self.pool_stride > self.pieces:
                raise ValueError(
                    f"Maxout: pool_stride must be at most pieces ({self.pieces}), "
                    f"got {pool_stride!r}; a larger stride leaves kernel columns "
                    "that no unit uses"
                )
        self._init_weights_args(
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        self._constraint_in_use = _kernel_constraint(
            "Maxout", self.max_norm, self.kernel_constraint, 0
        )
        stride = self.pieces if self.pool_stride is None else self.pool_stride
        self._overlapping = stride < self.pieces
        self.columns = (self.units - 1) * stride + self.pieces
        self._pool_index = None
        if self._overlapping:
            # pool_index[u, p] = the column of piece p of unit u.
            self._pool_index = (
                np.arange(self.units)[:, None] * stride + np.arange(self.pieces)
            ).astype("int32")
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "Maxout: the last axis of the input (the features) must have a "
                f"known size, got input shape {tuple(input_shape)}"
            )
        self._add_weights((input_dim, self.columns), self.columns, self._constraint_in_use)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs):
        z = ops.matmul(inputs, self.kernel)
        if self.use_bias:
            z = ops.add(z, self.bias)
        leading = ops.shape(z)[:-1]
        if self._overlapping:
            # (..., units, pieces): consecutive columns u*stride ... + pieces-1.
            outputs = ops.max(ops.take(z, self._pool_index, axis=-1), axis=-1)
        else:
            # Piece-major columns: (..., pieces, units), max over the pieces.
            z = ops.reshape(z, tuple(leading) + (self.pieces, self.units))
            outputs = ops.max(z, axis=-2)
        if self.min_zero:
            outputs = ops.maximum(outputs, 0.0)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "pieces": self.pieces,
                "min_zero": self.min_zero,
                "pool_stride": self.pool_stride,
            }
        )
        config.update(self._weights_config())
        return config


@export
class MaxoutConv2D(_MaxoutBase):
    """Convolutional maxout: one convolution to `filters * pieces` channels,
    then the max over each filter's pieces.

    The convolutional maxout of Goodfellow et al. 2013 (section 2 and the
    conv-MNIST, CIFAR-10 and SVHN models): each output channel `f` at each
    position is `max_p conv(x, W)[..., p * filters + f]`. The channels of the
    kernel are piece-major like `Maxout`'s columns: channel `p * filters + f`
    is piece `p` of filter `f`. The paper's spatial max-pooling is a separate
    `keras.layers.MaxPooling2D`. Runs `keras.ops.conv`, so it works on every
    backend; with `"channels_first"` on TensorFlow, whose CPU convolution
    takes channels_last only, the input is transposed to channels_last and
    the output back (JAX and PyTorch convolve channels_first directly).

    Args:
        filters: positive int, the number of output channels.
        pieces: positive int, the number of linear pieces per channel.
        kernel_size: positive int or pair of them, the convolution window.
        strides: positive int or pair of them.
        padding: `"valid"` or `"same"`.
        max_norm: None or a positive float. pylearn2's `max_kernel_norm`:
            after every update, each of the `filters * pieces` kernels (the
            `kernel_size + (input_channels,)` weights of one output channel)
            is rescaled to L2 norm `max_norm` if its norm is larger
            (`keras.constraints.MaxNorm(max_norm, axis=[0, 1, 2])`).
        data_format: `"channels_last"` (default unless
            `keras.config.image_data_format()` says otherwise) or
            `"channels_first"`.
        use_bias: bool, whether each of the `filters * pieces` channels has a
            bias.
        kernel_initializer: initializer for the kernel.
        bias_initializer: initializer for the bias.
        kernel_regularizer: regularizer for the kernel.
        bias_regularizer: regularizer for the bias.
        activity_regularizer: regularizer for the output.
        kernel_constraint: constraint for the kernel; cannot be combined with
            `max_norm`.
        bias_constraint: constraint for the bias.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a rank-4 tensor, `(batch, rows, cols, channels)` for
            channels_last or `(batch, channels, rows, cols)` for
            channels_first.

    Returns:
        A rank-4 tensor with `filters` channels.

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        MaxoutConv2D(48, pieces=2, kernel_size=8, padding="same",
                     max_norm=0.9),
        keras.layers.MaxPooling2D(4, strides=2),
    ])
    ```

    Reference:
        Goodfellow, Warde-Farley, Mirza, Courville, Bengio, "Maxout Networks",
        ICML 2013, arXiv:1302.4389.
    """

    def __init__(
        self,
        filters,
        pieces,
        kernel_size,
        strides=1,
        padding="valid",
        max_norm=None,
        data_format=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        name = "MaxoutConv2D"
        self.filters = _positive_int(name, "filters", filters)
        self.pieces = _positive_int(name, "pieces", pieces)
        self.kernel_size = _int_pair(name, "kernel_size", kernel_size)
        self.strides = _int_pair(name, "strides", strides)
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(f"{name}: padding must be 'valid' or 'same', got {padding!r}")
        self.padding = padding.lower()
        self.max_norm = _max_norm(name, max_norm)
        if data_format is None:
            data_format = keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"{name}: data_format must be 'channels_last' or 'channels_first', "
                f"got {data_format!r}"
            )
        self.data_format = data_format
        self._init_weights_args(
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        self._constraint_in_use = _kernel_constraint(
            name, self.max_norm, self.kernel_constraint, [0, 1, 2]
        )
        self._channel_axis = -1 if data_format == "channels_last" else 1
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(
                "MaxoutConv2D: the channel axis of the input must have a known "
                f"size, got input shape {tuple(input_shape)}"
            )
        columns = self.filters * self.pieces
        self._add_weights(
            self.kernel_size + (channels, columns), columns, self._constraint_in_use
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis: channels}
        )

    def _conv_channels_last(self, inputs):
        """`(batch, rows, cols, channels)` to `(batch, rows', cols', filters)`."""
        z = ops.conv(
            inputs,
            self.kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
        )
        if self.use_bias:
            z = ops.add(z, self.bias)
        shape = tuple(ops.shape(z))
        z = ops.reshape(z, shape[:-1] + (self.pieces, self.filters))
        return ops.max(z, axis=-2)

    def call(self, inputs):
        if self.data_format == "channels_last":
            return self._conv_channels_last(inputs)
        if keras.backend.backend() == "tensorflow":
            # TensorFlow's Conv2D kernel takes NCHW only on a GPU ("The Conv2D
            # op currently only supports the NHWC tensor format on the CPU"),
            # and where an op runs is only known when it runs. Convolve in
            # NHWC on every device: transpose in, take the max over the
            # pieces, then transpose the `filters` channels (not the
            # `filters * pieces` ones) back. On a GPU, TensorFlow's layout
            # optimizer picks the kernel's format itself anyway.
            outputs = self._conv_channels_last(ops.transpose(inputs, (0, 2, 3, 1)))
            return ops.transpose(outputs, (0, 3, 1, 2))
        # JAX and PyTorch convolve NCHW natively on every device.
        z = ops.conv(
            inputs,
            self.kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_first",
        )
        shape = tuple(ops.shape(z))
        if self.use_bias:
            z = ops.add(z, ops.reshape(self.bias, (-1, 1, 1)))
        z = ops.reshape(z, (shape[0], self.pieces, self.filters) + shape[2:])
        return ops.max(z, axis=1)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.data_format == "channels_last":
            spatial = input_shape[1:3]
        else:
            spatial = input_shape[2:4]
        out = []
        for size, k, s in zip(spatial, self.kernel_size, self.strides):
            if size is None:
                out.append(None)
            elif self.padding == "valid":
                out.append((size - k) // s + 1)
            else:
                out.append(-(-size // s))
        if self.data_format == "channels_last":
            return (input_shape[0], *out, self.filters)
        return (input_shape[0], self.filters, *out)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "pieces": self.pieces,
                "kernel_size": list(self.kernel_size),
                "strides": list(self.strides),
                "padding": self.padding,
                "data_format": self.data_format,
            }
        )
        config.update(self._weights_config())
        return config
