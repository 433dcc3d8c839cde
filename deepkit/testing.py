"""Test helpers for deepkit layers, written against the public Keras API only.

`TestCase.run_layer_test` checks what every deepkit layer must do: a JSON
config round trip, registration as ``deepkit>Name``, eager and symbolic calls
with the expected shapes, the expected numbers of weights and losses, one
`fit` step that changes the trainable weights, and a `.keras` save and load in
safe mode that gives identical outputs.
"""

import json
import os
import shutil
import tempfile
import unittest

import keras
import numpy as np


class TestCase(unittest.TestCase):
    """`unittest.TestCase` with numeric assertions and `run_layer_test`."""

    def setUp(self):
        super().setUp()
        keras.backend.clear_session()
        keras.utils.set_random_seed(1337)

    def get_temp_dir(self):
        """A fresh temporary folder, removed after the test."""
        path = tempfile.mkdtemp(prefix="deepkit-test-")
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        return path

    def assertAllClose(self, actual, desired, atol=1e-6, rtol=1e-6, msg=""):
        np.testing.assert_allclose(
            _numpy(actual), _numpy(desired), atol=atol, rtol=rtol, err_msg=msg
        )

    def assertAllEqual(self, actual, desired, msg=""):
        np.testing.assert_array_equal(_numpy(actual), _numpy(desired), err_msg=msg)

    def run_layer_test(
        self,
        layer_cls,
        init_kwargs,
        input_data=None,
        input_shape=None,
        input_dtype="float32",
        expected_output_shape=None,
        expected_num_trainable_weights=None,
        expected_num_non_trainable_weights=None,
        expected_num_losses=None,
        call_kwargs=None,
        run_training_check=True,
        run_saving_check=True,
        run_symbolic_check=True,
        custom_objects=None,
    ):
        """Check the contract every deepkit layer follows.

        Args:
            layer_cls: the layer class.
            init_kwargs: arguments for the constructor.
            input_data: a numpy array (or list of arrays) to call the layer
                on; made from `input_shape` when omitted.
            input_shape: shape of random input data when `input_data` is None.
            input_dtype: dtype of the random input data.
            expected_output_shape: the output shape for `input_data`.
            expected_num_trainable_weights: after the layer is built.
            expected_num_non_trainable_weights: after the layer is built.
            expected_num_losses: `len(layer.losses)` after a training call.
            call_kwargs: extra keyword arguments for `call`.
            run_training_check: whether to run one `fit` step.
            run_saving_check: whether to save and load a `.keras` model.
            run_symbolic_check: whether to call on a `keras.Input`.
            custom_objects: passed to `keras.saving.load_model`.
        """
        call_kwargs = dict(call_kwargs or {})
        if input_data is None:
            if input_shape is None:
                raise ValueError("run_layer_test needs input_data or input_shape")
            input_data = _random_input(input_shape, input_dtype)
        multi_input = isinstance(input_data, (list, tuple))

        # 1. Configuration: JSON round trip, registered name, same config back.
        layer = layer_cls(**init_kwargs)
        config = layer.get_config()
        self.assertEqual(
            json.loads(json.dumps(config)), config, "get_config() is not JSON-safe"
        )
        serialized = keras.saving.serialize_keras_object(layer)
        self.assertTrue(
            (serialized.get("registered_name") or "").startswith("deepkit>")
            or layer_cls.__module__.startswith("keras"),
            f"{layer_cls.__name__} is not registered as 'deepkit>...': "
            f"{serialized.get('registered_name')!r}",
        )
        revived = keras.saving.deserialize_keras_object(
            json.loads(json.dumps(serialized))
        )
        self.assertIsInstance(revived, layer_cls)
        self.assertEqual(revived.get_config(), config)
        self.assertEqual(layer_cls.from_config(config).get_config(), config)

        # 2. Eager call: shapes, weights, losses.
        output = layer(input_data, **call_kwargs)
        output_np = _numpy(output)
        if expected_output_shape is not None:
            self.assertEqual(tuple(output_np.shape), tuple(expected_output_shape))
        if expected_num_trainable_weights is not None:
            self.assertLen(layer.trainable_weights, expected_num_trainable_weights)
        if expected_num_non_trainable_weights is not None:
            self.assertLen(
                layer.non_trainable_weights, expected_num_non_trainable_weights
            )
        self.assertTrue(np.all(np.isfinite(output_np)), "non-finite layer output")
        if expected_num_losses is not None:
            layer(input_data, training=True, **call_kwargs)
            self.assertLen(layer.losses, expected_num_losses)

        # 3. Symbolic call on keras.Input, with an unknown batch size.
        if run_symbolic_check:
            inputs = _symbolic_inputs(input_data)
            symbolic_layer = layer_cls(**init_kwargs)
            symbolic_output = symbolic_layer(inputs, **call_kwargs)
            if expected_output_shape is not None:
                self.assertEqual(
                    tuple(symbolic_output.shape)[1:], tuple(expected_output_shape)[1:]
                )
                computed = symbolic_layer.compute_output_shape(
                    [tuple(i.shape) for i in inputs] if multi_input else tuple(inputs.shape)
                )
                if isinstance(computed, tuple) and computed and isinstance(
                    computed[0], (int, type(None))
                ):
                    self.assertEqual(tuple(computed)[1:], tuple(expected_output_shape)[1:])

        # 4. One training step changes the trainable weights.
        model = None
        if run_training_check or run_saving_check:
            inputs = _symbolic_inputs(input_data)
            model = keras.Model(inputs, layer_cls(**init_kwargs)(inputs, **call_kwargs))
        if run_training_check:
            target = np.random.default_rng(0).normal(size=output_np.shape).astype(
                "float32"
            )
            model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
            before = [_numpy(w).copy() for w in model.trainable_weights]
            history = model.fit(
                input_data, target, batch_size=len(target), epochs=1, verbose=0
            )
            self.assertTrue(np.isfinite(history.history["loss"][0]), "loss not finite")
            if before:
                after = [_numpy(w) for w in model.trainable_weights]
                changed = any(not np.array_equal(b, a) for b, a in zip(before, after))
                self.assertTrue(changed, "one fit step changed no trainable weight")

        # 5. .keras save and load in safe mode: identical outputs.
        if run_saving_check:
            path = os.path.join(self.get_temp_dir(), "model.keras")
            model.save(path)
            loaded = keras.saving.load_model(
                path, custom_objects=custom_objects, safe_mode=True
            )
            self.assertAllClose(
                loaded.predict(input_data, verbose=0),
                model.predict(input_data, verbose=0),
                atol=1e-6,
                rtol=0,
                msg="outputs differ after .keras save and load",
            )
            self.assertEqual(
                loaded.layers[-1].get_config(), model.layers[-1].get_config()
            )
        return layer

    def assertLen(self, container, expected, msg=None):
        self.assertEqual(len(container), expected, msg)

    def assertConfigRoundTrip(self, obj):
        """Check that `obj` (a layer or model) has a JSON config, is
        registered as ``deepkit>ClassName``, and that ``from_config`` gives
        back the same config; returns the config."""
        config = obj.get_config()
        self.assertEqual(json.loads(json.dumps(config)), config, "config is not JSON")
        self.assertEqual(
            keras.saving.serialize_keras_object(obj)["registered_name"],
            f"deepkit>{type(obj).__name__}",
        )
        self.assertEqual(type(obj).from_config(config).get_config(), config)
        return config


def _torch_numpy(grad, shape):
    """A torch gradient as numpy; zeros where autograd found no path."""
    if grad is None:
        return np.zeros(tuple(shape), "float32")
    return grad.detach().cpu().numpy()


def _numpy(x):
    if isinstance(x, (list, tuple)):
        return np.asarray([_numpy(i) for i in x])
    if hasattr(x, "detach"):  # a torch tensor that may require grad
        x = x.detach()
    return np.asarray(keras.ops.convert_to_numpy(x))


def _random_input(shape, dtype):
    rng = np.random.default_rng(1)
    if isinstance(shape, list):
        return [_random_input(s, dtype) for s in shape]
    if "int" in str(dtype):
        return rng.integers(0, 4, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _symbolic_inputs(data):
    if isinstance(data, (list, tuple)):
        return [keras.Input(shape=np.shape(d)[1:], dtype=str(np.asarray(d).dtype)) for d in data]
    return keras.Input(shape=np.shape(data)[1:], dtype=str(np.asarray(data).dtype))


def weight_gradients(layer, x, loss_fn, training=None, return_output=False):
    """Gradients of ``loss_fn(layer(x))`` for ``layer.trainable_variables``.

    Uses the backend's own autodiff (TensorFlow's `GradientTape`,
    `jax.grad` of the layer's `stateless_call`, or `torch.autograd.grad`), so a test can compare a
    layer's gradients with numbers worked out by hand. `loss_fn` maps the
    layer's output to a scalar with `keras.ops`. Builds the layer on `x`
    if needed.

    Returns:
        The gradients as numpy arrays, in the order of
        ``layer.trainable_variables``; with ``return_output=True``,
        ``(gradients, output)``.
    """
    if not layer.built:
        layer(x)
    kwargs = {} if training is None else {"training": training}
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            output = layer(x, **kwargs)
            value = loss_fn(output)
        grads = tape.gradient(value, layer.trainable_variables)
        grads = [np.asarray(tf.convert_to_tensor(g)) for g in grads]
    elif backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(values):
            out, _ = layer.stateless_call(values, non_trainable, x, **kwargs)
            return loss_fn(out), out

        raw, output = jax.grad(loss, has_aux=True)(trainable)
        grads = [np.asarray(g) for g in raw]
    elif backend == "torch":
        import torch

        variables = layer.trainable_variables
        output = layer(x, **kwargs)
        raw = torch.autograd.grad(
            loss_fn(output), [v.value for v in variables], allow_unused=True
        )
        grads = [_torch_numpy(g, v.shape) for g, v in zip(raw, variables)]
    else:
        raise NotImplementedError(f"weight_gradients: no autodiff helper for backend {backend!r}")
    return (grads, _numpy(output)) if return_output else grads


def input_gradient(fn, x, has_aux=False):
    """``d fn(x) / dx`` for a scalar `fn` written with `keras.ops`.

    With ``has_aux=True``, `fn` returns ``(scalar, aux)`` and the result is
    ``(gradient, aux)``. A gradient that does not reach `x` is zeros. Numpy
    arrays out, the backend's own autodiff inside.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            result = fn(x)
        value, aux = result if has_aux else (result, None)
        grad = tape.gradient(value, x)
        grad = (np.zeros(x.shape, x.dtype.as_numpy_dtype) if grad is None
                else np.asarray(tf.convert_to_tensor(grad)))  # IndexedSlices from a gather
    elif backend == "jax":
        import jax

        result = jax.grad(fn, has_aux=has_aux)(keras.ops.convert_to_tensor(x))
        grad, aux = result if has_aux else (result, None)
        grad = np.asarray(grad)
    elif backend == "torch":
        import torch

        x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        result = fn(x)
        value, aux = result if has_aux else (result, None)
        # A value that does not depend on x at all has no graph to follow.
        (raw,) = (torch.autograd.grad(value, [x], allow_unused=True)
                  if value.requires_grad else (None,))
        grad = _torch_numpy(raw, x.shape)
    else:
        raise NotImplementedError(f"input_gradient: no autodiff helper for backend {backend!r}")
    return (grad, _numpy(aux)) if has_aux else grad
