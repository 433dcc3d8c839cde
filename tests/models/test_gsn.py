"""Tests for deepkit.models.gsn: DenoisingAutoencoder, GSN, walkback, sampling.

The numpy references replay the noise: a test saves the seed-generator states
of the model's noise layers, runs one ordinary `fit` step (SGD with learning
rate 1, so the gradient is the change of the weights), restores the states
and draws the same variates with each layer's public `draw_noise`, in the
order the chain consumes them (one generator per layer, so only the order
within a layer matters).
"""

import os
from pathlib import Path

import keras
import numpy as np
from keras import ops

from deepkit.datasets.mnist import read_idx
from deepkit.layers import GaussianCorruption, MaskingCorruption, SaltAndPepper
from deepkit.models import GSN, DenoisingAutoencoder
from deepkit.models import gsn as gsn_module
from deepkit.testing import TestCase

MNIST = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "mnist"
X = np.random.default_rng(0).random((5, 6)).astype("float32")
X[:2] = X[:2] > 0.5  # binary and real-valued rows
EPS = 1e-7


# -- numpy references ---------------------------------------------------------


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def bce(p, x):
    p = np.clip(p, EPS, 1 - EPS)
    return np.mean(-(x * np.log(p) + (1 - x) * np.log(1 - p)))


def salt_and_pepper(x, u, rate):
    return np.where(u < rate, (u < rate / 2).astype(x.dtype), x)


def update_order(depth):
    return list(range(1, depth + 1, 2)) + list(range(2, depth + 1, 2))


def numpy_gsn_loss(params, x, noise, rate, sigma, sample_visible=True):
    """Σ_t mean BCE of the GSN chain of yaoli/GSN, written out in numpy."""
    kernels, biases = params["kernels"], params["biases"]
    depth = len(kernels)
    visible = salt_and_pepper(x, noise["initial"], rate)
    hiddens = [np.zeros((len(x), w.shape[1])) for w in kernels]
    total = 0.0
    for step in noise["steps"]:
        layers = [visible] + hiddens
        for i in update_order(depth):
            pre = layers[i - 1] @ kernels[i - 1] + biases[i]
            if i < depth:
                pre = pre + layers[i + 1] @ kernels[i].T
            if i in step["hidden"]:
                pre = pre + sigma * step["hidden"][i][0]
            h = np.tanh(pre)
            if i in step["hidden"]:
                h = h + sigma * step["hidden"][i][1]
            layers[i] = h
        hiddens = layers[1:]
        p = sigmoid(hiddens[0] @ kernels[0].T + biases[0])
        total += bce(p, x)
        sampled = (step["sample"] < p).astype(p.dtype) if sample_visible else p
        visible = salt_and_pepper(sampled, step["corruption"], rate)
    return total


def numpy_dae_loss(params, x, noise, rate, contractive_weight=0.0):
    w, bh, bv = params["kernel"], params["hidden_bias"], params["visible_bias"]
    decoder = params.get("decoder_kernel", w.T)
    visible = salt_and_pepper(x, noise["initial"], rate)
    total = 0.0
    for step in noise["steps"]:
        h = sigmoid(visible @ w + bh)
        p = sigmoid(h @ decoder + bv)
        total += bce(p, x)
        visible = salt_and_pepper((step["sample"] < p).astype(p.dtype), step["corruption"], rate)
    h = sigmoid(x @ w + bh)
    penalty = np.mean(np.sum((h * (1 - h)) ** 2 * np.sum(w**2, axis=0), axis=1))
    return total + contractive_weight * penalty


def finite_difference(fn, params, eps=1e-5):
    """Central differences of fn(params) for every array in the nested params."""
    grads = {}
    for key, value in params.items():
        arrays = value if isinstance(value, list) else [value]
        result = []
        for array in arrays:
            grad = np.zeros_like(array)
            for index in np.ndindex(array.shape):
                saved = array[index]
                array[index] = saved + eps
                up = fn(params)
                array[index] = saved - eps
                down = fn(params)
                array[index] = saved
                grad[index] = (up - down) / (2 * eps)
            result.append(grad)
        grads[key] = result if isinstance(value, list) else result[0]
    return grads


# -- helpers -------------------------------------------------------------------


def numpy_of(tensor):
    if isinstance(tensor, keras.Variable):
        tensor = tensor.value
    return np.array(ops.convert_to_numpy(tensor), dtype="float64")


def generators(model):
    layers = [model.corruption, model.visible_sampler]
    if hasattr(model, "hidden_noise"):
        layers.append(model.hidden_noise)
    return [layer.seed_generator for layer in layers]


def save_states(model):
    return [np.array(ops.convert_to_numpy(g.state.value)) for g in generators(model)]


def restore_states(model, states):
    for generator, state in zip(generators(model), states):
        generator.state.assign(state)


def replay_noise(model, batch, steps, noisy_layers=()):
    """The variates of a training call, drawn again from the restored states."""
    dim = model._visible_dim()
    draw = lambda layer, shape: numpy_of(layer.draw_noise(shape))  # noqa: E731
    noise = {"initial": draw(model.corruption, (batch, dim)), "steps": []}
    for _ in range(steps):
        hidden = {}
        for i in noisy_layers:
            shape = (batch, model.hidden_units[i - 1])
            hidden[i] = (draw(model.hidden_noise, shape), draw(model.hidden_noise, shape))
        sample = draw(model.visible_sampler, (batch, dim)) if model.sample_visible else None
        noise["steps"].append(
            {"hidden": hidden, "sample": sample, "corruption": draw(model.corruption, (batch, dim))}
        )
    return noise


def fit_one_step(model, x):
    """One SGD(1.0) step of ordinary fit on x alone: (loss, gradients by path)."""
    model.compile(keras.optimizers.SGD(1.0), jit_compile=False)
    before = {v.path: numpy_of(v) for v in model.trainable_variables}
    history = model.fit(x, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    grads = {v.path: before[v.path] - numpy_of(v) for v in model.trainable_variables}
    return history.history["loss"][0], grads, before


def tiny_gsn(**kwargs):
    config = dict(hidden_units=(4, 3), walkback_steps=1, seed=3)
    config.update(kwargs)
    model = GSN(**config)
    model.build((None, 6))
    return model


def gsn_params(model, values):
    return {
        "kernels": [values[w.path].copy() for w in model.kernels],
        "biases": [values[b.path].copy() for b in model.biases],
    }


def gsn_grads(model, grads):
    return {
        "kernels": [grads[w.path] for w in model.kernels],
        "biases": [grads[b.path] for b in model.biases],
    }


def mnist_fixture(limit=200):
    images = read_idx(MNIST / "train-images-idx3-ubyte.gz")[:limit]
    return images.reshape(len(images), -1).astype("float32") / 255.0


# -- tests ---------------------------------------------------------------------


class GSNWalkbackTest(TestCase):
    def test_one_walkback_step_loss_and_gradients_against_numpy(self):
        # One step with the paper's noise: only the input corruption reaches
        # the loss (h1 is noiseless, h2 and the resampling come after p).
        model = tiny_gsn(walkback_steps=1, corruption=SaltAndPepper(0.4, seed=5))
        states = save_states(model)
        loss, grads, before = fit_one_step(model, X)
        restore_states(model, states)
        noise = replay_noise(model, len(X), 1, noisy_layers=(2,))
        params = gsn_params(model, before)
        w0, w1 = params["kernels"]
        b0, b1, b2 = params["biases"]
        x = X.astype("float64")
        corrupted = salt_and_pepper(x, noise["initial"], 0.4)
        self.assertGreater(np.mean(corrupted != x), 0.1)
        h1 = np.tanh(corrupted @ w0 + b1)  # h2 starts at zero
        p = sigmoid(h1 @ w0.T + b0)
        self.assertAllClose(loss, bce(p, x), rtol=1e-5, atol=1e-6)
        self.assertAllClose(loss, numpy_gsn_loss(params, x, noise, 0.4, 2.0), rtol=1e-5)
        # Backpropagation by hand.
        delta0 = (p - x) / x.size
        delta1 = (delta0 @ w0) * (1 - h1**2)
        expected = {
            "kernels": [corrupted.T @ delta1 + delta0.T @ h1, np.zeros_like(w1)],
            "biases": [delta0.sum(0), delta1.sum(0), np.zeros_like(b2)],
        }
        actual = gsn_grads(model, grads)
        for key in ("kernels", "biases"):
            for a, e in zip(actual[key], expected[key]):
                self.assertAllClose(a, e, atol=2e-6, rtol=1e-4, msg=key)

    def test_three_walkback_steps_with_all_noise_against_numpy(self):
        model = tiny_gsn(walkback_steps=3, hidden_noise_stddev=0.5,
                         corruption=SaltAndPepper(0.3, seed=6))
        states = save_states(model)
        loss, grads, before = fit_one_step(model, X)
        restore_states(model, states)
        noise = replay_noise(model, len(X), 3, noisy_layers=(2,))
        params = gsn_params(model, before)
        x = X.astype("float64")

        def fn(p):
            return numpy_gsn_loss(p, x, noise, 0.3, 0.5)

        self.assertAllClose(loss, fn(params), rtol=1e-5)
        expected = finite_difference(fn, params)
        actual = gsn_grads(model, grads)
        for key in ("kernels", "biases"):
            for a, e in zip(actual[key], expected[key]):
                self.assertAllClose(a, e, atol=2e-5, rtol=1e-3, msg=key)
        # Every weight matters after the first step.
        self.assertGreater(np.abs(actual["kernels"][1]).max(), 1e-4)

    def test_noise_on_the_first_hidden_layer_and_three_layers(self):
        model = tiny_gsn(hidden_units=(4, 3, 2), walkback_steps=2, hidden_noise_stddev=0.3,
                         noiseless_first_hidden=False, sample_visible=False,
                         corruption=SaltAndPepper(0.2, seed=7))
        states = save_states(model)
        loss, grads, before = fit_one_step(model, X)
        restore_states(model, states)
        noise = replay_noise(model, len(X), 2, noisy_layers=(1, 3, 2))
        params = gsn_params(model, before)
        x = X.astype("float64")

        def fn(p):
            return numpy_gsn_loss(p, x, noise, 0.2, 0.3, sample_visible=False)

        self.assertAllClose(loss, fn(params), rtol=1e-5)
        expected = finite_difference(fn, params)
        actual = gsn_grads(model, grads)
        for key in ("kernels", "biases"):
            for a, e in zip(actual[key], expected[key]):
                self.assertAllClose(a, e, atol=2e-5, rtol=1e-3, msg=key)

    def test_without_noise_training_and_inference_are_the_same_chain(self):
        model = tiny_gsn(walkback_steps=3, hidden_noise_stddev=0.0, sample_visible=False,
                         corruption=SaltAndPepper(0.0))
        out = ops.convert_to_numpy(model(X))
        self.assertEqual(out.shape, (5, 3, 6))
        self.assertAllClose(model(X, training=True), out, atol=1e-6)
        # The noiseless chain: each step reconstructs the previous mean.
        params = gsn_params(model, {v.path: numpy_of(v) for v in model.trainable_variables})
        w0, w1 = params["kernels"]
        b0, b1, b2 = params["biases"]
        visible, h2 = X.astype("float64"), np.zeros((5, 3))
        for t in range(3):
            h1 = np.tanh(visible @ w0 + h2 @ w1.T + b1)
            h2 = np.tanh(h1 @ w1 + b2)
            visible = sigmoid(h1 @ w0.T + b0)
            self.assertAllClose(out[:, t], visible, atol=1e-6)
        self.assertEqual(model.compute_output_shape((None, 6)), (None, 3, 6))

    def test_fit_on_mnist_lowers_the_loss(self):
        x = mnist_fixture()
        model = GSN(hidden_units=(64, 32), walkback_steps=2, seed=1)
        # A larger rate than the paper's 0.25: six short epochs instead of 1000 long ones.
        model.compile(keras.optimizers.SGD(2.0, momentum=0.5))
        history = model.fit(x, batch_size=20, epochs=6, verbose=0)
        losses = history.history["loss"]
        self.assertTrue(np.all(np.isfinite(losses)))
        self.assertLess(losses[-1], losses[0] - 0.05, losses)
        evaluated = model.evaluate(x, verbose=0)
        self.assertTrue(np.isfinite(evaluated))

    def test_argument_errors(self):
        with self.assertRaisesRegex(ValueError, "walkback_steps"):
            GSN(walkback_steps=0)
        with self.assertRaisesRegex(ValueError, "hidden_units"):
            GSN(hidden_units=())
        with self.assertRaisesRegex(ValueError, "corruption must be"):
            GSN(corruption=keras.layers.Dropout(0.5))
        with self.assertRaisesRegex(ValueError, "not built"):
            GSN(hidden_units=(3,)).sample(1, 2, seed=0)
        model = tiny_gsn()
        model.compile("sgd", loss="mse")
        with self.assertRaisesRegex(ValueError, "without `loss`"):
            model.compute_loss(X, X, model(X))


class DenoisingAutoencoderTest(TestCase):
    def test_walkback_loss_and_tied_gradients_against_numpy(self):
        model = DenoisingAutoencoder(4, walkback_steps=3, contractive_weight=0.3,
                                     corruption=SaltAndPepper(0.4, seed=2), seed=1)
        model.build((None, 6))
        self.assertLen(model.trainable_variables, 3)
        states = save_states(model)
        loss, grads, before = fit_one_step(model, X)
        restore_states(model, states)
        noise = replay_noise(model, len(X), 3)
        names = {"kernel": model.kernel, "hidden_bias": model.hidden_bias,
                 "visible_bias": model.visible_bias}
        params = {k: before[v.path].copy() for k, v in names.items()}
        x = X.astype("float64")

        def fn(p):
            return numpy_dae_loss(p, x, noise, 0.4, contractive_weight=0.3)

        self.assertAllClose(loss, fn(params), rtol=1e-5)
        expected = finite_difference(fn, params)
        for key, variable in names.items():
            self.assertAllClose(grads[variable.path], expected[key], atol=2e-5, rtol=1e-3,
                                msg=key)

    def test_untied_loss_against_numpy(self):
        model = DenoisingAutoencoder(5, tied_weights=False, walkback_steps=2,
                                     corruption=SaltAndPepper(0.25, seed=3), seed=2)
        model.build((None, 6))
        self.assertLen(model.trainable_variables, 4)
        states = save_states(model)
        loss, _, before = fit_one_step(model, X)
        restore_states(model, states)
        noise = replay_noise(model, len(X), 2)
        params = {k: before[getattr(model, k).path]
                  for k in ("kernel", "hidden_bias", "visible_bias", "decoder_kernel")}
        self.assertAllClose(loss, numpy_dae_loss(params, X.astype("float64"), noise, 0.25),
                            rtol=1e-5)

    def test_reconstruction_at_inference(self):
        model = DenoisingAutoencoder(4, seed=1)
        out = ops.convert_to_numpy(model(X))
        self.assertEqual(out.shape, (5, 1, 6))
        w = numpy_of(model.kernel)
        h = sigmoid(X @ w + numpy_of(model.hidden_bias))
        self.assertAllClose(out[:, 0], sigmoid(h @ w.T + numpy_of(model.visible_bias)),
                            atol=1e-6)

    def test_contractive_penalty_is_the_jacobian_norm(self):
        rng = np.random.default_rng(4)
        x = rng.random((3, 5))
        w = rng.normal(size=(5, 4))
        b = rng.normal(size=4)
        fns = {"sigmoid": sigmoid, "tanh": np.tanh, "relu": lambda a: np.maximum(a, 0),
               "linear": lambda a: a}
        for name, f in fns.items():
            norms = []
            for row in x:
                jacobian = np.zeros((4, 5))
                for i in range(5):
                    step = np.zeros(5)
                    step[i] = 1e-6
                    jacobian[:, i] = (f((row + step) @ w + b) - f((row - step) @ w + b)) / 2e-6
                norms.append(np.sum(jacobian**2))
            value = gsn_module.contractive_penalty(
                x.astype("float32"), w.astype("float32"), b.astype("float32"), name)
            self.assertAllClose(value, np.mean(norms), rtol=1e-4, msg=name)
        with self.assertRaisesRegex(ValueError, "contractive"):
            DenoisingAutoencoder(4, activation="softplus", contractive_weight=0.1)

    def test_contractive_penalty_is_added_to_the_loss(self):
        model = DenoisingAutoencoder(4, contractive_weight=0.5, seed=1)
        y_pred = model(X)
        self.assertLen(model.losses, 1)
        expected = 0.5 * gsn_module.contractive_penalty(
            X, model.kernel, model.hidden_bias, "sigmoid")
        self.assertAllClose(model.losses[0], expected, rtol=1e-6)
        loss = model.compute_loss(X, None, y_pred, training=False)
        self.assertAllClose(
            loss, gsn_module.reconstruction_cross_entropy(X, y_pred) + expected, rtol=1e-6)
        plain = DenoisingAutoencoder(4, seed=1)
        plain(X)
        self.assertLen(plain.losses, 0)

    def test_fit_on_mnist_lowers_the_loss(self):
        x = (mnist_fixture() > 0.5).astype("float32")
        model = DenoisingAutoencoder(64, walkback_steps=2, seed=1)
        model.compile(keras.optimizers.SGD(1.0))
        history = model.fit(x, batch_size=20, epochs=5, verbose=0)
        losses = history.history["loss"]
        self.assertLess(losses[-1], losses[0] - 0.05, losses)


class SamplingTest(TestCase):
    def setUp(self):
        super().setUp()
        self.model = tiny_gsn(hidden_units=(5, 4), walkback_steps=2, seed=2)
        # Larger weights than the initialization, so the chain moves.
        for w in self.model.kernels:
            w.assign(w * 3.0)

    def test_sample_is_reproducible_from_the_seed(self):
        a = self.model.sample(3, 6, seed=4)
        self.assertEqual(a.shape, (3, 6, 6))
        self.assertTrue(np.all((a >= 0) & (a <= 1)))
        self.assertAllEqual(self.model.sample(3, 6, seed=4), a)
        self.assertFalse(np.array_equal(self.model.sample(3, 6, seed=5), a))
        # A longer chain starts with the shorter one's steps.
        self.assertAllEqual(self.model.sample(3, 9, seed=4)[:, :6], a)
        # The chains differ from each other and move from step to step.
        self.assertGreater(np.abs(a[0] - a[1]).max(), 1e-3)
        self.assertGreater(np.abs(a[:, 1:] - a[:, :-1]).max(), 1e-3)
        # One initial vector for every chain.
        b = self.model.sample(3, 6, seed=1, initial=X[0])
        self.assertEqual(b.shape, (3, 6, 6))
        self.assertAllEqual(self.model.sample(3, 6, seed=1, initial=X[:1]), b)

    def test_run_chain_returns_the_hidden_states(self):
        chain = self.model.run_chain(X, 4, seed=3)
        self.assertEqual(chain["probabilities"].shape, (5, 4, 6))
        self.assertEqual([h.shape for h in chain["hiddens"]], [(5, 4, 5), (5, 4, 4)])
        self.assertEqual(chain["visible"].shape, (5, 6))
        for t in range(4):
            logits = self.model.visible_logits([h[:, t] for h in chain["hiddens"]])
            self.assertAllClose(ops.sigmoid(logits), chain["probabilities"][:, t], atol=1e-6)
        # Salt-and-pepper then sampling: the last visible state is binary.
        self.assertTrue(np.all((chain["visible"] == 0) | (chain["visible"] == 1)))
        self.assertAllEqual(self.model.run_chain(X, 4, seed=3)["probabilities"],
                            chain["probabilities"])
        self.assertIsNone(self.model.run_chain(X, 2, seed=3, return_hiddens=False)["hiddens"])

    def test_inpaint_keeps_the_known_pixels(self):
        mask = np.array([1, 1, 1, 0, 0, 0], "float32")
        out = self.model.inpaint(X, mask, 5, seed=6)
        self.assertEqual(out.shape, (5, 5, 6))
        known = np.broadcast_to(mask != 0, (5, 5, 6))
        self.assertAllEqual(out[known], np.broadcast_to(X[:, None], (5, 5, 6))[known])
        self.assertAllEqual(self.model.inpaint(X, mask, 5, seed=6), out)
        self.assertFalse(np.array_equal(self.model.inpaint(X, mask, 5, seed=7), out))
        # The unknown pixels do not depend on x's values there.
        other = X.copy()
        other[:, 3:] = 0.123
        self.assertAllEqual(self.model.inpaint(other, mask, 5, seed=6), out)
        # A per-example mask.
        masks = np.zeros((5, 6), "float32")
        masks[np.arange(5), np.arange(5)] = 1
        per_example = self.model.inpaint(X, masks, 3, seed=1)
        rows = np.arange(5)
        self.assertAllEqual(per_example[rows, :, rows], np.repeat(X[rows, rows][:, None], 3, 1))

    def test_dae_samples(self):
        dae = DenoisingAutoencoder(4, seed=1)
        dae.build((None, 6))
        a = dae.sample(2, 5, seed=1)
        self.assertEqual(a.shape, (2, 5, 6))
        self.assertAllEqual(dae.sample(2, 5, seed=1), a)


class SerializationTest(TestCase):
    def test_config_round_trip(self):
        gsn = GSN(hidden_units=(4, 3), walkback_steps=2, activation="sigmoid",
                  corruption=MaskingCorruption(0.3, seed=1), hidden_noise_stddev=0.5,
                  noiseless_first_hidden=False, sample_visible=False, seed=9)
        config = self.assertConfigRoundTrip(gsn)
        self.assertEqual(config["hidden_units"], [4, 3])
        revived = GSN.from_config(config)
        self.assertIsInstance(revived.corruption, MaskingCorruption)
        self.assertEqual(revived.corruption.rate, 0.3)
        dae = DenoisingAutoencoder(7, activation="tanh", tied_weights=False,
                                   corruption=GaussianCorruption(0.2), walkback_steps=3,
                                   contractive_weight=0.1, seed=2)
        config = self.assertConfigRoundTrip(dae)
        self.assertIsInstance(DenoisingAutoencoder.from_config(config).corruption,
                              GaussianCorruption)
        self.assertConfigRoundTrip(GSN(hidden_units=(3,)))

    def test_save_and_load(self):
        for model in (
            GSN(hidden_units=(5, 4), walkback_steps=2, seed=1),
            DenoisingAutoencoder(5, tied_weights=False, walkback_steps=2,
                                 corruption=MaskingCorruption(0.3, seed=2), seed=1),
        ):
            name = type(model).__name__
            model.compile(keras.optimizers.SGD(0.1))
            model.fit(X, batch_size=5, epochs=1, verbose=0)
            path = os.path.join(self.get_temp_dir(), f"{name}.keras")
            model.save(path)
            loaded = keras.saving.load_model(path, safe_mode=True)
            self.assertIsInstance(loaded, type(model))
            self.assertEqual(type(loaded.corruption), type(model.corruption))
            self.assertAllClose(loaded.predict(X, verbose=0), model.predict(X, verbose=0),
                                atol=1e-6, msg=name)
            self.assertAllEqual(loaded.sample(2, 4, seed=3), model.sample(2, 4, seed=3),
                                msg=name)
            mask = np.array([0, 1, 0, 1, 0, 1])
            self.assertAllEqual(loaded.inpaint(X, mask, 3, seed=2),
                                model.inpaint(X, mask, 3, seed=2), msg=name)
