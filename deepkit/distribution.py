"""Training on several devices with the engines that exist for it.

`Scale(kind, ...)` names how a model trains across devices and builds the
engine: ``tf.distribute`` on the TensorFlow backend (``"mirrored"``,
``"multi_worker_mirrored"``), ``keras.distribution`` on JAX and torch
(``"data_parallel"``, ``"model_parallel"`` with a layout map, and
``"expert_parallel"``, the layout that shards `deepkit.layers.GatedExperts`'
experts over the devices). Nothing is home-made: build, compile and fit the
model inside ``scale.scope()`` and Keras and the engine do the rest. The
recipe key ``distribution:`` and ``deepkit run --distribution`` use the same
object.

The batch size is global: a recipe's ``batch_size`` is the number of
examples of one step over all replicas; each replica gets
``batch_size / replicas`` (`Scale.per_replica_batch`), which must divide
evenly. Keras scales the loss of each replica by ``1 / replicas`` and the
optimizer sums the replicas' gradients, so a step on several devices is the
step on one device with the same global batch (tests/distribution).

For a try on one CPU, `split_cpu(n)` makes ``n`` logical CPU devices: it must
run before the backend starts (before TensorFlow lists its devices; before
JAX is imported, through ``XLA_FLAGS``), which ``deepkit run --cpu-devices N``
does.

Example:

```python
import keras
from deepkit.distribution import Scale

scale = Scale("data_parallel")          # JAX: every device; TF: use "mirrored"
with scale.scope():
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    model.compile("sgd", "sparse_categorical_crossentropy")
print(scale.describe(batch_size=100))   # replicas, per-replica batch, devices
```

References: TensorFlow's ``tf.distribute`` guide (MirroredStrategy,
MultiWorkerMirroredStrategy, TF_CONFIG); Keras 3's ``keras.distribution``
(DataParallel, ModelParallel, DeviceMesh, LayoutMap).
"""

import contextlib
import json
import math
import os

KINDS = ("mirrored", "multi_worker_mirrored", "data_parallel", "model_parallel",
         "expert_parallel")
# The backends each kind runs on. keras.distribution's TensorFlow side is
# marked unfinished upstream, so TensorFlow goes through tf.distribute.
BACKENDS = {
    "mirrored": ("tensorflow",),
    "multi_worker_mirrored": ("tensorflow",),
    "data_parallel": ("jax", "torch"),
    "model_parallel": ("jax",),
    "expert_parallel": ("jax",),
}
# What each kind is called on the other engine, for the refusal's message.
_COUNTERPART = {"mirrored": "data_parallel", "multi_worker_mirrored": "data_parallel",
                "data_parallel": "mirrored", "model_parallel": None, "expert_parallel": None}
# The GatedExperts variables an expert-parallel layout shards, by their
# first axis (the expert index).
EXPERT_LAYOUT = {
    ".*expert_kernel_.*": ("model", None, None),
    ".*expert_bias_.*": ("model", None),
}


class DistributionError(ValueError):
    """A distribution cannot be used as asked (kind, backend, devices, batch)."""


def split_cpu(n, backend=None):
    """Make `n` logical CPU devices; call before the backend starts.

    TensorFlow: splits the first physical CPU into `n` logical devices
    (raises if TensorFlow has already initialized its devices). JAX: sets
    ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` (effective only
    when JAX is imported after this call).
    """
    n = int(n)
    if n < 1:
        raise DistributionError(f"cpu devices must be a positive integer, got {n}")
    backend = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError as error:
            raise DistributionError(f"cannot split the CPU into {n} devices: TensorFlow has "
                                    f"already started ({error})") from None
    else:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        os.environ["XLA_FLAGS"] = " ".join(flags + [
            f"--xla_force_host_platform_device_count={n}"])


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise DistributionError(f"TF_CONFIG is not JSON: {error}") from None


# Engines that must exist before TensorFlow starts its devices, one per process.
_STARTED = {}


def start(spec):
    """Make the engine of `spec` now if it must precede the backend's start
    (MultiWorkerMirroredStrategy configures TensorFlow's collectives at
    program start-up); the CLI calls it before anything lists devices."""
    scale = Scale.from_spec(spec)
    if scale.kind == "multi_worker_mirrored":
        scale.engine()
    return scale


def worker_name():
    """``"worker-<index>"`` of this process in TF_CONFIG (``"worker-0"`` without)."""
    task = (_tf_config() or {}).get("task", {})
    return f"{task.get('type', 'worker')}-{int(task.get('index', 0))}"


class Scale:
    """How a model trains across devices, and the engine that does it.

    Args:
        kind: one of `KINDS`, or None (one device).
        layout: for ``"model_parallel"``: ``{variable path regex: axes}``,
            each axes a list of mesh axis names or None per dimension
            (``keras.distribution.LayoutMap``); ``"expert_parallel"`` adds
            `EXPERT_LAYOUT` to it.
        mesh: for ``"model_parallel"`` / ``"expert_parallel"``: ``{axis name:
            size}``, in order (default ``{"batch": 1, "model": devices}``:
            the model axis over every device).
        devices: how many devices to use (default: all the backend sees).

    Example: see the module docstring.
    """

    def __init__(self, kind=None, layout=None, mesh=None, devices=None):
        if kind is not None and kind not in KINDS:
            raise DistributionError(f"distribution: unknown kind {kind!r}; expected one of "
                                    f"{', '.join(KINDS)}")
        if layout is not None and kind not in ("model_parallel", "expert_parallel"):
            raise DistributionError(f"distribution {kind}: a layout is for model_parallel "
                                    "and expert_parallel")
        self.kind, self.layout, self.mesh = kind, dict(layout or {}), mesh
        self.devices = devices
        self._engine = None

    @classmethod
    def from_spec(cls, spec):
        """A `Scale` from a recipe's ``distribution:`` value: a kind, or
        ``{kind: {layout: ..., mesh: ..., devices: ...}}``, or None."""
        if spec is None or isinstance(spec, Scale):
            return spec or cls()
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, dict) and len(spec) == 1:
            (kind, options), = spec.items()
            options = dict(options or {})
            unknown = set(options) - {"layout", "mesh", "devices"}
            if unknown:
                raise DistributionError(f"distribution {kind}: unknown options "
                                        f"{sorted(unknown)}; expected layout, mesh, devices")
            return cls(kind, **options)
        raise DistributionError(f"distribution: expected a kind ({', '.join(KINDS)}) or "
                                f"{{kind: {{options}}}}, got {spec!r}")

    # -- checks --------------------------------------------------------------
    def check_backend(self, backend):
        """DistributionError when this kind does not run on `backend`."""
        if self.kind is None or backend in BACKENDS[self.kind]:
            return
        other = _COUNTERPART[self.kind]
        hint = (f"; on {backend} the same is distribution: {other}"
                if other and backend in BACKENDS[other] else "")
        raise DistributionError(f"distribution {self.kind} runs on the "
                                f"{' or '.join(BACKENDS[self.kind])} backend, not {backend}"
                                f"{hint}")

    # -- the engine ------------------------------------------------------------
    def _device_names(self, devices=None):
        """`devices` (default: keras.distribution's list), cut to `self.devices`."""
        if devices is None:
            import keras

            devices = keras.distribution.list_devices()
        if self.devices is not None:
            if int(self.devices) > len(devices):
                raise DistributionError(f"distribution {self.kind}: {self.devices} devices "
                                        f"asked for, {len(devices)} present: {devices}")
            devices = devices[: int(self.devices)]
        return devices

    def engine(self):
        """The tf.distribute strategy or keras.distribution object (built once)."""
        if self._engine is not None or self.kind is None:
            return self._engine
        import keras

        self.check_backend(keras.backend.backend())
        if self.kind == "mirrored":
            import tensorflow as tf

            self._engine = tf.distribute.MirroredStrategy(devices=self._tf_devices())
        elif self.kind == "multi_worker_mirrored":
            import tensorflow as tf

            if _tf_config() is None:
                raise DistributionError("distribution multi_worker_mirrored: TF_CONFIG is "
                                        "not set; each worker needs TF_CONFIG with the "
                                        "cluster's workers and its own task index")
            # One per process, made before TensorFlow starts (`start`).
            if "multi_worker_mirrored" not in _STARTED:
                _STARTED["multi_worker_mirrored"] = tf.distribute.MultiWorkerMirroredStrategy()
            self._engine = _STARTED["multi_worker_mirrored"]
        elif self.kind == "data_parallel":
            self._engine = keras.distribution.DataParallel(devices=self._device_names())
        else:
            devices = self._device_names()
            mesh_shape = dict(self.mesh or {"batch": 1, "model": len(devices)})
            size = math.prod(int(n) for n in mesh_shape.values())
            if size != len(devices):
                raise DistributionError(f"distribution {self.kind}: the mesh {mesh_shape} "
                                        f"holds {size} devices, but {len(devices)} are used")
            mesh = keras.distribution.DeviceMesh(tuple(int(n) for n in mesh_shape.values()),
                                                 list(mesh_shape), devices)
            layout_map = keras.distribution.LayoutMap(mesh)
            layout = dict(self.layout)
            if self.kind == "expert_parallel":
                layout = {**EXPERT_LAYOUT, **layout}
            for pattern, axes in layout.items():
                layout_map[pattern] = tuple(axes)
            batch_axis = "batch" if "batch" in mesh_shape else list(mesh_shape)[0]
            self._engine = keras.distribution.ModelParallel(layout_map=layout_map,
                                                            batch_dim_name=batch_axis)
        return self._engine

    def _tf_devices(self):
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return self._device_names(
            [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))])

    @property
    def replicas(self):
        """Replicas a step's batch is split over (1 without a distribution)."""
        engine = self.engine()
        if engine is None:
            return 1
        if hasattr(engine, "num_replicas_in_sync"):
            return int(engine.num_replicas_in_sync)
        mesh = engine.device_mesh
        axis = getattr(engine, "batch_dim_name", None) or mesh.axis_names[0]
        return int(mesh.shape[list(mesh.axis_names).index(axis)])

    @property
    def is_chief(self):
        """Whether this process writes checkpoints, reports and the model."""
        if self.kind == "multi_worker_mirrored":
            config = _tf_config() or {}
            task = config.get("task", {})
            cluster = config.get("cluster", {})
            if "chief" in cluster:
                return task.get("type") == "chief"
            return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0
        if self.kind is not None:
            import keras

            if keras.backend.backend() == "jax":
                import jax

                return jax.process_index() == 0
        return True

    def per_replica_batch(self, batch_size):
        """``batch_size / replicas``; DistributionError when it does not divide."""
        replicas = self.replicas
        if batch_size % replicas:
            raise DistributionError(f"distribution {self.kind}: the global batch size "
                                    f"{batch_size} does not split over {replicas} replicas; "
                                    f"use a multiple of {replicas}")
        return batch_size // replicas

    @contextlib.contextmanager
    def scope(self):
        """Build, compile and fit inside this (the strategy's or the
        distribution's own scope; nothing on one device)."""
        engine = self.engine()
        with engine.scope() if engine is not None else contextlib.nullcontext():
            yield self

    def describe(self, batch_size=None):
        """What `env.json` records: kind, replicas, devices, batch sizes."""
        out = {"kind": self.kind, "replicas": self.replicas}
        engine = self.engine()
        if engine is not None and hasattr(engine, "extended"):
            out["devices"] = list(getattr(engine.extended, "worker_devices", []))
        elif engine is not None:
            out["devices"] = [str(d) for d in engine.device_mesh.devices.flatten()]
            out["mesh"] = dict(zip(engine.device_mesh.axis_names,
                                   [int(n) for n in engine.device_mesh.shape]))
        if batch_size is not None:
            out["global_batch_size"] = int(batch_size)
            out["per_replica_batch_size"] = self.per_replica_batch(int(batch_size))
        if self.kind == "multi_worker_mirrored":
            out["tf_config_task"] = (_tf_config() or {}).get("task")
        return out
