"""ExpertMLP: E two-layer MLPs run side by side as batched matmuls."""

import keras
from keras import ops

from deepkit.export import export


def per_expert_initializer(initializer, num_experts):
    """`initializer` for an ``[E, d, h]`` kernel, as if each expert were ``[d, h]``.

    Keras' variance-scaling rule counts the leading axes of a kernel as a
    receptive field: an ``[E, d, h]`` kernel gets fans ``E·d`` and ``E·h``,
    ``E`` times too small a variance for a layer whose experts each see ``d``
    inputs. Multiplying the scale by ``E`` gives each expert the variance of a
    ``[d, h]`` Dense kernel under the same initializer. The seed is kept
    (the very same integer or `SeedGenerator`), so the draws are those the
    initializer would make. Other initializers are returned unchanged.

    Args:
        initializer: a Keras initializer object.
        num_experts: ``E``.

    Returns:
        An initializer.
    """
    if isinstance(initializer, keras.initializers.VarianceScaling):
        return keras.initializers.VarianceScaling(
            scale=initializer.scale * num_experts,
            mode=initializer.mode,
            distribution=initializer.distribution,
            seed=initializer.seed,
        )
    return initializer


@export
class ExpertMLP(keras.layers.Layer):
    """``E`` two-layer MLP experts on per-expert token buffers, as batched matmuls.

    Expert ``e`` computes ``act(x W1[e] + b1[e]) W2[e] + b2[e]``. Called on a
    ``[E, C, d]`` buffer (``C`` tokens for each of the ``E`` experts, as
    `deepkit.layers.routing.run_in_expert_buffers` gathers them), each
    expert runs on its own ``C`` tokens: one `keras.ops.matmul` per weight on
    ``[E, C, d]`` and kernels ``[E, d, units]`` (the einsum
    ``"ecd,edh->ech"`` written as a batched matmul; TF's einsum was 1.4x
    slower at 64 experts here, on JAX both are the same ``dot_general``).
    `call_all` runs every expert on every token instead: ``[B, d] -> [B, E,
    output_units]`` (dense; compute grows with ``E``).

    Each expert is initialized as a ``[d, units]`` (and ``[units,
    output_units]``) Dense kernel would be: for a variance-scaling
    initializer (Glorot, He, LeCun, ...) the scale is multiplied by ``E``,
    since Keras counts the leading expert axis into both fans (see
    `per_expert_initializer`). An initializer with a seed draws all experts
    at once from that seed, so the experts still differ.

    Args:
        num_experts: number of experts ``E``.
        units: hidden width of each expert.
        output_units: output width of each expert; defaults to the input
            width ``d``.
        activation: activation of the hidden layer.
        kernel_initializer: initializer of the first kernel ``[E, d, units]``,
            as for one expert's ``[d, units]`` kernel (variance-scaling
            initializers are rescaled by ``E`` inside).
        output_kernel_initializer: initializer of the second kernel ``[E,
            units, output_units]``, rescaled in the same way; None: the same
            initializer object as ``kernel_initializer`` (with an integer
            seed, the same seed).
        bias_initializer: initializer of both biases (``[E, units]`` and
            ``[E, output_units]``).
        **kwargs: base `Layer` arguments (name, dtype, ...).

    Call arguments:
        inputs: ``[E, C, d]``, the tokens of each expert's buffer.

    Returns:
        ``[E, C, output_units]``: expert ``e``'s outputs on ``inputs[e]``.
        `call_all(x)` takes ``[B, d]`` and returns ``[B, E, output_units]``.

    Example:

    ```python
    experts = ExpertMLP(num_experts=4, units=64, output_units=10)
    buffers = np.random.normal(size=(4, 16, 32)).astype("float32")
    y = experts(buffers)  # (4, 16, 10): expert e on buffers[e]
    every = experts.call_all(buffers[0])  # (16, 4, 10): every expert on 16 tokens
    ```

    Reference:
        Shazeer et al. 2017, "Outrageously Large Neural Networks: The
        Sparsely-Gated Mixture-of-Experts Layer", arXiv:1701.06538 (the
        experts of a mixture as feed-forward networks of identical
        architecture). Collobert, Bengio, Bengio 2002, "A Parallel Mixture of
        SVMs for Very Large Scale Problems", Neural Computation 14(5) (MLP
        experts trained side by side, each on its own subset).
    """

    def __init__(
        self,
        num_experts,
        units,
        output_units=None,
        activation="relu",
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("num_experts", num_experts), ("units", units)):
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"ExpertMLP: {name} must be a positive integer, got {value!r}")
        if output_units is not None and (
            isinstance(output_units, bool) or int(output_units) != output_units
            or int(output_units) < 1
        ):
            raise ValueError(
                f"ExpertMLP: output_units must be None or a positive integer, got {output_units!r}"
            )
        self.num_experts = int(num_experts)
        self.units = int(units)
        self.output_units = None if output_units is None else int(output_units)
        self.activation = keras.activations.get(activation)
        # In this order: an unseeded initializer draws its seed when constructed.
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if output_kernel_initializer is None:
            self.output_kernel_initializer = None
        else:
            self.output_kernel_initializer = keras.initializers.get(output_kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self._output_dim = self.output_units

    @property
    def output_dim(self):
        """The output width (known once the layer is built, or when given)."""
        return self._output_dim

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "ExpertMLP is called on [num_experts, capacity, d] buffers; got an input "
                f"of shape {tuple(input_shape)} (use call_all for [batch, d] tokens)"
            )
        if input_shape[0] is not None and input_shape[0] != self.num_experts:
            raise ValueError(
                f"ExpertMLP: the input's first axis ({input_shape[0]}) must be "
                f"num_experts={self.num_experts}"
            )
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError("ExpertMLP needs a known last input dimension")
        experts, hidden = self.num_experts, self.units
        self._output_dim = self.output_units or int(input_dim)
        kernel_init = per_expert_initializer(self.kernel_initializer, experts)
        if self.output_kernel_initializer is None:
            output_init = kernel_init
        else:
            output_init = per_expert_initializer(self.output_kernel_initializer, experts)
        self.expert_kernel_1 = self.add_weight(
            name="expert_kernel_1",
            shape=(experts, input_dim, hidden),
            initializer=kernel_init,
        )
        self.expert_bias_1 = self.add_weight(
            name="expert_bias_1",
            shape=(experts, hidden),
            initializer=self.bias_initializer,
        )
        self.expert_kernel_2 = self.add_weight(
            name="expert_kernel_2",
            shape=(experts, hidden, self._output_dim),
            initializer=output_init,
        )
        self.expert_bias_2 = self.add_weight(
            name="expert_bias_2",
            shape=(experts, self._output_dim),
            initializer=self.bias_initializer,
        )

    def call(self, inputs):
        hidden = ops.matmul(inputs, self.expert_kernel_1)
        hidden = self.activation(hidden + self.expert_bias_1[:, None, :])
        outputs = ops.matmul(hidden, self.expert_kernel_2)
        return outputs + self.expert_bias_2[:, None, :]

    def call_all(self, inputs):
        """Every expert on every token: ``[B, d] -> [B, E, output_units]``.

        The einsums ``"bd,edh->beh"`` and ``"beh,eho->beo"``; compute and
        memory grow with ``E`` (for a mixture's dense, soft combination, or
        for reading every expert's opinion). Inputs and weights are cast to
        the layer's compute dtype; an unbuilt layer is built for inputs of
        width ``d``.

        Args:
            inputs: ``[B, d]`` tokens.

        Returns:
            ``[B, E, output_units]``; ``[b, e]`` is expert ``e``'s output on
            token ``b``, the same as the buffer call gives when token ``b``
            is in expert ``e``'s buffer.
        """
        if not self.built:
            self.build((self.num_experts, None, inputs.shape[-1]))
        dtype = self.compute_dtype
        x = ops.cast(inputs, dtype)
        kernel_1 = ops.cast(self.expert_kernel_1, dtype)
        bias_1 = ops.cast(self.expert_bias_1, dtype)
        kernel_2 = ops.cast(self.expert_kernel_2, dtype)
        bias_2 = ops.cast(self.expert_bias_2, dtype)
        hidden = self.activation(ops.einsum("bd,edh->beh", x, kernel_1) + bias_1[None])
        return ops.einsum("beh,eho->beo", hidden, kernel_2) + bias_2[None]

    def compute_output_shape(self, input_shape):
        units = self.output_units or input_shape[-1]
        return tuple(input_shape[:-1]) + (units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "units": self.units,
                "output_units": self.output_units,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "output_kernel_initializer": (
                    None
                    if self.output_kernel_initializer is None
                    else keras.initializers.serialize(self.output_kernel_initializer)
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
