"""GatedExperts: a sparsely gated mixture of experts with fixed-capacity dispatch."""

import keras
from keras import ops

from deepkit.export import export
from deepkit.layers import routing
from deepkit.layers.expert_mlp import ExpertMLP

ROUTERS = ("top_k", "switch", "softmax", "hard")
NOISES = (None, "gaussian", "noisy_top_k")
BALANCE_LOSSES = (None, "switch", "shazeer")
DROPPED_TOKENS = ("input", "zero")


def _plain(value):
    """Plain dicts and lists (Keras wraps dict attributes in tracked types)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _expert_template(expert):
    """The template layer and its serialized form, from a layer or a serialized dict."""
    if isinstance(expert, keras.layers.Layer):
        layer = expert
    elif isinstance(expert, dict) and "class_name" in expert and "config" in expert:
        try:
            layer = keras.saving.deserialize_keras_object(_plain(expert))
        except Exception as e:
            raise ValueError(f"expert: cannot deserialize {_plain(expert)!r}: {e}") from e
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"expert must describe a Keras layer, got {_plain(expert)!r}")
    else:
        hint = ""
        if isinstance(expert, dict) and len(expert) == 1:
            hint = (
                " (the recipe form {Name: {...}} is built into a layer by the recipe "
                "engine; in Python pass the layer, e.g. expert=keras.layers.Dense(8))"
            )
        raise ValueError(
            "expert must be a Keras layer (a template, copied once per expert) or a "
            f"dict from keras.saving.serialize_keras_object, got {expert!r}{hint}"
        )
    # Inside a saving or loading scope Keras marks objects it serializes twice
    # with "shared_object_id"; the template is private to this layer.
    config = _unshared(keras.saving.serialize_keras_object(layer))
    config.pop("build_config", None)  # each copy is built by GatedExperts.build
    config.pop("compile_config", None)
    return layer, config


def _unshared(value):
    """`value` without Keras' ``shared_object_id`` entries, as plain dicts."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, (list, tuple)):
        return [_unshared(item) for item in value]
    return value


def _expert_copies(template, num_experts):
    """``num_experts`` fresh copies of `template`, named ``expert_0``, ..."""
    copies = []
    for e in range(num_experts):
        config = template.get_config()
        config["name"] = f"expert_{e}"
        copies.append(template.__class__.from_config(config))
    return copies


@export
class GatedExperts(keras.layers.Layer):
    """A mixture of experts: each token goes to a few of many expert MLPs.

    A router (a linear map to one logit per expert, computed in float32)
    chooses experts for each token; the token's output is the gate-weighted sum
    of its experts' outputs (Shazeer et al. 2017, Eq. 1). All leading
    dimensions of the input are flattened into tokens. Each expert takes at most
    ``capacity = ceil(tokens · k / num_experts · capacity_factor)`` tokens per
    call; assignments beyond it are dropped, first choices of all tokens being
    served before second choices (Switch/GShard order). A token all of whose
    choices are dropped passes through unchanged when the output has the
    input's width (``dropped_tokens="input"``), else its output is zero.

    Compute grows with ``k`` and the capacity factor, not with the number of
    experts: tokens are gathered into a ``[num_experts, capacity, d]`` buffer by
    slot indices computed with one sort (`deepkit.layers.routing`), the default
    expert, a `deepkit.layers.ExpertMLP` (attribute ``expert_mlp``), runs as
    one batched matmul per weight (``einsum("ecd,edh->ech")`` as
    `keras.ops.matmul` on ``[num_experts, capacity, d]`` and kernels
    ``[num_experts, d, hidden]``), and outputs are gathered back.

    During training the layer adds its balance loss and z-loss with
    `add_loss`, and accumulates routing statistics in non-trainable variables
    (see `routing_statistics`): the fraction of assignments each expert is
    chosen for (before capacity), the fraction of assignments dropped, and the
    router entropy. Variables, rather than layer-owned metrics, because on the
    JAX backend a layer's `call` runs statelessly and only its non-trainable
    variables are carried out of the step; `deepkit.callbacks.ExpertLoad`
    reads them and writes per-epoch values into the logs, on TF and JAX alike.

    Args:
        num_experts: number of experts ``E``. With one expert every token
            goes to it with gate 1, whatever the router (no softmax is
            computed); the layer is then one MLP with capacity limits.
        expert_units: hidden width of the default two-layer expert MLP.
        output_units: output width; defaults to the input width.
        router: ``"top_k"`` (Shazeer: softmax over the k kept logits),
            ``"switch"`` (top-1, gate = router probability), ``"softmax"``
            (every expert, dense gating; compute grows with ``E``) or
            ``"hard"`` (Collobert et al.: argmax, gate 1, straight-through
            router gradient).
        top_k: experts per token for ``router="top_k"``.
        noise: ``None``; ``"gaussian"``, logits + N(0, noise_stddev²) in
            training; or ``"noisy_top_k"``, Shazeer's trainable noise
            ``ε · softplus(x W_noise)`` (Eq. 4), in training only.
        noise_stddev: the standard deviation for ``noise="gaussian"``.
        train_capacity_factor: capacity factor in training.
        eval_capacity_factor: capacity factor at inference.
        balance_loss: ``"switch"`` (α · N · Σ f_i P_i), ``"shazeer"``
            (importance CV² + load CV²; the load term needs noise, without
            noise only the importance term is added) or ``None``.
        balance_loss_weight: α, the weight of the balance loss (each of
            Shazeer's two terms gets this weight).
        z_loss_weight: weight of the router z-loss (mean logsumexp² of the
            clean logits); 0 turns it off.
        expert: optional Keras or deepkit layer used as the expert instead
            of the default MLP: a template, never built or called itself;
            each expert is a fresh copy, ``layer.__class__.from_config(
            layer.get_config())``, named ``expert_0``, ``expert_1``, ...,
            and the experts run one after another (no batched matmul). The
            dict of `keras.saving.serialize_keras_object` is accepted too (as
            `get_config` stores it). In a recipe, ``expert: {Dense: {units:
            8}}`` is built into the layer by the recipe engine. An
            initializer with a fixed seed gives every copy the same initial
            weights; unseeded ones draw a seed per copy.
        activation: activation of the default expert's hidden layer.
        dropped_tokens: ``"input"`` (pass through, when widths match) or
            ``"zero"`` (output zero; use inside a residual block).
        residual: if True the output is ``inputs + mixture`` (Switch
            Transformers' residual expert layer; widths must match): a
            dropped token's output is then its input, and a served token's
            output is on the same scale. Without it, a served token's output
            ``p_i · E_i(x)`` and a passed-through token's ``x`` differ in
            scale, which on MNIST made the router collapse.
        kernel_initializer: for the default expert's kernels, as for one
            expert's Dense kernel: variance-scaling initializers use each
            expert's own fans (see `deepkit.layers.ExpertMLP`).
        bias_initializer: for the default expert's biases.
        router_initializer: for the router kernel; default zeros with
            ``noise="noisy_top_k"`` (as Shazeer et al.), else a truncated
            normal with standard deviation ``sqrt(0.1 / d)`` (Switch
            Transformers' small initialization: near-uniform routing at the
            start; a Glorot router on ReLU features collapsed onto 6 of 16
            experts on MNIST here).
        seed: seed for the router noise.
        **kwargs: base `Layer` arguments (name, dtype, ...).

    Call arguments:
        inputs: ``[..., d]``.
        training: whether to add noise, losses and statistics, and which
            capacity factor to use.
        mask: optional bool ``[...]`` (the input without its last axis);
            masked tokens are not routed and take no capacity; their output
            is that of a dropped token. The mask is passed on.

    Returns:
        ``[..., output_units]``.

    Example:

    ```python
    layer = GatedExperts(num_experts=8, expert_units=64, top_k=2)
    y = layer(np.random.normal(size=(4, 10, 32)).astype("float32"))  # (4, 10, 32)
    ```

    Reference:
        Collobert, Bengio, Bengio 2002, "Scaling large learning problems with
        hard parallel mixtures". Shazeer et al. 2017, "Outrageously Large
        Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer",
        arXiv:1701.06538. Fedus, Zoph, Shazeer 2021, "Switch Transformers",
        arXiv:2101.03961.
    """

    def __init__(
        self,
        num_experts,
        expert_units=None,
        output_units=None,
        router="top_k",
        top_k=2,
        noise=None,
        noise_stddev=1.0,
        train_capacity_factor=1.25,
        eval_capacity_factor=2.0,
        balance_loss="switch",
        balance_loss_weight=0.01,
        z_loss_weight=0.0,
        expert=None,
        activation="relu",
        dropped_tokens="input",
        residual=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        router_initializer=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_experts) < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        if balance_loss not in BALANCE_LOSSES:
            raise ValueError(
                f"balance_loss must be one of {BALANCE_LOSSES}, got {balance_loss!r}"
            )
        if dropped_tokens not in DROPPED_TOKENS:
            raise ValueError(
                f"dropped_tokens must be one of {DROPPED_TOKENS}, got {dropped_tokens!r}"
            )
        if router == "top_k" and not 1 <= int(top_k) <= int(num_experts):
            raise ValueError(f"top_k must be in [1, num_experts], got {top_k}")
        if expert is None and expert_units is None:
            raise ValueError("expert_units is required for the default expert MLP")
        if min(train_capacity_factor, eval_capacity_factor) <= 0:
            raise ValueError("capacity factors must be positive")
        self.num_experts = int(num_experts)
        self.expert_units = None if expert_units is None else int(expert_units)
        self.output_units = None if output_units is None else int(output_units)
        self.router = router
        self.top_k = int(top_k)
        self.noise = noise
        self.noise_stddev = float(noise_stddev)
        self.train_capacity_factor = float(train_capacity_factor)
        self.eval_capacity_factor = float(eval_capacity_factor)
        self.balance_loss = balance_loss
        self.balance_loss_weight = float(balance_loss_weight)
        self.z_loss_weight = float(z_loss_weight)
        self.activation = keras.activations.get(activation)
        self.dropped_tokens = dropped_tokens
        self.residual = bool(residual)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if router_initializer is None:
            self.router_initializer = None
        else:
            self.router_initializer = keras.initializers.get(router_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        if balance_loss == "shazeer" and noise is not None and self.k >= self.num_experts:
            raise ValueError("Shazeer's load loss needs fewer experts per token than experts")
        # After the initializers and the seed generator, as before ExpertMLP
        # existed: unseeded initializers draw their seeds in this order.
        self.experts = None
        self.expert_mlp = None
        self._expert_config = None
        if expert is not None:
            template, self._expert_config = _expert_template(expert)
            self.experts = _expert_copies(template, self.num_experts)
        else:
            self.expert_mlp = ExpertMLP(
                self.num_experts,
                self.expert_units,
                output_units=self.output_units,
                activation=self.activation,
                kernel_initializer=self.kernel_initializer,
                bias_initializer=self.bias_initializer,
                dtype=self.dtype_policy,
                name="expert_mlp",
            )
        self.supports_masking = True

    @property
    def k(self):
        """Experts per token, as the router implies."""
        return {
            "top_k": self.top_k,
            "switch": 1,
            "hard": 1,
            "softmax": self.num_experts,
        }[self.router]

    # The default expert's weights (None with a custom `expert`).
    @property
    def expert_kernel_1(self):
        """``[E, d, expert_units]``, the default expert's first kernel."""
        return None if self.expert_mlp is None else self.expert_mlp.expert_kernel_1

    @property
    def expert_bias_1(self):
        """``[E, expert_units]``, the default expert's first bias."""
        return None if self.expert_mlp is None else self.expert_mlp.expert_bias_1

    @property
    def expert_kernel_2(self):
        """``[E, expert_units, output]``, the default expert's second kernel."""
        return None if self.expert_mlp is None else self.expert_mlp.expert_kernel_2

    @property
    def expert_bias_2(self):
        """``[E, output]``, the default expert's second bias."""
        return None if self.expert_mlp is None else self.expert_mlp.expert_bias_2

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError("GatedExperts needs a known last input dimension")
        num_experts = self.num_experts
        if self.router_initializer is not None:
            router_init = self.router_initializer
        elif self.noise == "noisy_top_k":
            router_init = "zeros"
        else:
            # Switch Transformers, Section 2.4: truncated normal, std sqrt(0.1 / fan_in).
            router_init = keras.initializers.VarianceScaling(
                scale=0.1, mode="fan_in", distribution="truncated_normal", seed=self.seed
            )
        self.router_kernel = self.add_weight(
            name="router_kernel",
            shape=(input_dim, num_experts),
            initializer=router_init,
            dtype="float32",
            autocast=False,
        )
        if self.noise == "noisy_top_k":
            self.noise_kernel = self.add_weight(
                name="noise_kernel",
                shape=(input_dim, num_experts),
                initializer="zeros",
                dtype="float32",
                autocast=False,
            )
        if self.experts is not None:
            for expert in self.experts:
                expert.build((None, input_dim))
            units = self.experts[0].compute_output_shape((None, input_dim))[-1]
            if self.output_units is not None and units != self.output_units:
                raise ValueError(
                    f"the expert's output width {units} differs from "
                    f"output_units={self.output_units}"
                )
            self._output_dim = units
        else:
            self.expert_mlp.build((num_experts, None, input_dim))
            self._output_dim = self.expert_mlp.output_dim
        if self.residual and self._output_dim != input_dim:
            raise ValueError(
                f"residual=True needs the output width ({self._output_dim}) to equal "
                f"the input width ({input_dim})"
            )
        # Routing statistics, summed over training calls (see ExpertLoad).
        self.load_total = self._statistic("load_total", (num_experts,))
        self.dropped_total = self._statistic("dropped_total", ())
        self.entropy_total = self._statistic("entropy_total", ())
        self.steps_total = self._statistic("steps_total", ())

    def _statistic(self, name, shape):
        # Each step adds a mean over its batch (and 1 to the step count):
        # with several replicas, their additions are averaged, so the
        # statistics are those of the global batch.
        return self.add_weight(
            name=name,
            shape=shape,
            initializer="zeros",
            dtype="float32",
            trainable=False,
            autocast=False,
            aggregation="mean",
        )

    def _run_experts(self, buffer):
        """``[E, C, d] -> [E, C, output]``."""
        if self.experts is not None:
            return ops.stack(
                [expert(buffer[e]) for e, expert in enumerate(self.experts)], axis=0
            )
        return self.expert_mlp(buffer)

    def _route(self, logits):
        if self.num_experts == 1:
            return self._single_expert_route(logits)
        if self.router == "top_k":
            return routing.top_k_route(logits, self.top_k)
        if self.router == "switch":
            return routing.switch_route(logits)
        if self.router == "hard":
            return routing.hard_route(logits)
        return routing.softmax_route(logits)

    @staticmethod
    def _single_expert_route(logits):
        """Every router's route with one expert: expert 0, gate 1, probs 1.

        A softmax over a single logit is 1 whatever the logit, with gradient
        0, so it is not computed (Keras warns about a softmax over an axis of
        size 1). ``logits - logits + 1`` is exactly 1 too and keeps the router
        kernel in the gradient graph with the same zero gradient, so that
        TensorFlow does not report it as a variable without gradient.
        """
        logits = ops.cast(logits, "float32")
        ones = logits - logits + 1.0
        return ops.zeros_like(logits, dtype="int32"), ones, ones

    def call(self, inputs, training=None, mask=None):
        training = bool(training)
        input_shape = ops.shape(inputs)
        input_dim = inputs.shape[-1]
        tokens = ops.reshape(inputs, (-1, input_dim))
        num_tokens = tokens.shape[0]
        if num_tokens is None:  # dynamic shapes (TF without XLA)
            num_tokens = ops.shape(tokens)[0]
        valid = None
        if mask is not None:
            valid = ops.reshape(ops.cast(mask, "bool"), (-1,))

        # Router, in float32 (Switch Transformers, Section 2.4).
        tokens32 = ops.cast(tokens, "float32")
        clean_logits = ops.matmul(tokens32, self.router_kernel)
        logits, noise_scale = clean_logits, None
        if training and self.noise is not None:
            if self.noise == "noisy_top_k":
                noise_scale = ops.softplus(ops.matmul(tokens32, self.noise_kernel))
            else:
                noise_scale = self.noise_stddev
            epsilon = keras.random.normal(
                ops.shape(clean_logits), seed=self.seed_generator
            )
            logits = routing.noisy_logits(clean_logits, epsilon, noise_scale)
        expert_index, gates, probs = self._route(logits)

        # Fixed-capacity dispatch.
        factor = self.train_capacity_factor if training else self.eval_capacity_factor
        capacity = routing.expert_capacity(num_tokens, self.num_experts, factor, self.k)
        outputs, keep = routing.run_in_expert_buffers(
            tokens, expert_index, ops.cast(gates, self.compute_dtype), self.num_experts,
            capacity, self._run_experts, valid,
        )
        if self.residual:
            outputs = tokens + outputs
        elif self.dropped_tokens == "input" and self._output_dim == input_dim:
            dropped = ops.logical_not(ops.any(keep, axis=1))
            outputs = ops.where(ops.expand_dims(dropped, -1), tokens, outputs)

        if training:
            self._add_losses(clean_logits, logits, noise_scale, expert_index, gates, probs, valid)
            self._update_statistics(expert_index, keep, probs, valid)
        return ops.reshape(outputs, tuple(input_shape[:-1]) + (self._output_dim,))

    def _add_losses(self, clean_logits, logits, noise_scale, expert_index, gates, probs, valid):
        weight = self.balance_loss_weight
        if self.balance_loss == "switch" and weight:
            self.add_loss(weight * routing.switch_balance_loss(probs, expert_index, valid))
        elif self.balance_loss == "shazeer" and weight:
            loss = routing.importance_loss(expert_index, gates, self.num_experts, valid)
            if noise_scale is not None:
                loss = loss + routing.load_loss(
                    clean_logits, logits, noise_scale, self.k, valid
                )
            self.add_loss(weight * loss)
        if self.z_loss_weight:
            self.add_loss(self.z_loss_weight * routing.router_z_loss(clean_logits, valid))

    def _update_statistics(self, expert_index, keep, probs, valid):
        expert_index = ops.stop_gradient(expert_index)
        probs = ops.stop_gradient(probs)
        fractions = routing.expert_fractions(expert_index, self.num_experts, valid)
        kept = ops.sum(ops.cast(keep, "float32"))
        if valid is None:
            routed = ops.sum(ops.ones_like(keep, dtype="float32"))
        else:
            routed = ops.sum(ops.cast(valid, "float32")) * self.k
        dropped = 1.0 - kept / ops.maximum(routed, 1.0)
        self.load_total.assign_add(fractions)
        self.dropped_total.assign_add(dropped)
        self.entropy_total.assign_add(routing.router_entropy(probs, valid))
        self.steps_total.assign_add(1.0)

    def routing_statistics(self):
        """Totals of the routing statistics over training calls so far.

        Returns:
            A dict of numpy values: ``load`` (``[E]``, sum over calls of the
            fraction of assignments chosen for each expert), ``dropped`` (sum
            of the fraction of assignments dropped), ``entropy`` (sum of the
            mean router entropy, nats) and ``steps`` (number of calls). Divide
            by ``steps``, or take differences between two reads (what
            `ExpertLoad` does per epoch).
        """
        return {
            "load": ops.convert_to_numpy(self.load_total),
            "dropped": float(ops.convert_to_numpy(self.dropped_total)),
            "entropy": float(ops.convert_to_numpy(self.entropy_total)),
            "steps": float(ops.convert_to_numpy(self.steps_total)),
        }

    def compute_output_shape(self, input_shape):
        if self.experts is not None:
            units = self.experts[0].compute_output_shape((None, input_shape[-1]))[-1]
        else:
            units = self.output_units or input_shape[-1]
        return tuple(input_shape[:-1]) + (units,)

    def compute_mask(self, inputs, mask=None):
        return mask

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("expert"), dict):
            config["expert"], _ = _expert_template(config["expert"])
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "expert_units": self.expert_units,
                "output_units": self.output_units,
                "router": self.router,
                "top_k": self.top_k,
                "noise": self.noise,
                "noise_stddev": self.noise_stddev,
                "train_capacity_factor": self.train_capacity_factor,
                "eval_capacity_factor": self.eval_capacity_factor,
                "balance_loss": self.balance_loss,
                "balance_loss_weight": self.balance_loss_weight,
                "z_loss_weight": self.z_loss_weight,
                "expert": _plain(self._expert_config),
                "activation": keras.activations.serialize(self.activation),
                "dropped_tokens": self.dropped_tokens,
                "residual": self.residual,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "router_initializer": (
                    None
                    if self.router_initializer is None
                    else keras.initializers.serialize(self.router_initializer)
                ),
                "seed": self.seed,
            }
        )
        return config
