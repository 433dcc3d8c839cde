"""Tests for deepkit.training.layerwise: greedy layer-wise denoising pre-training."""

import inspect
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from deepkit import export
from deepkit.layers import MaskingCorruption, SaltAndPepper
from deepkit.training import DenoisingPretraining, Stage, fit_stages, reconstruction_loss
from deepkit.testing import TestCase

RNG = np.random.default_rng(0)
X = (RNG.random((64, 20)) < 0.3).astype("float32")
Y = (X[:, :10].sum(axis=1) > 3).astype("int32")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_bce(target, p):
    """Σ over units of the cross-entropy, mean over examples (no clipping)."""
    return float(np.mean(-np.sum(target * np.log(p) + (1 - target) * np.log(1 - p), axis=1)))


def three_layers(name="model"):
    """Input(20) -> Dense(8) hidden_1 -> Dense(6) hidden_2 -> Dense(3) softmax,
    with seeded initializers (two calls give identical weights); the output
    layer keeps its automatic name, which differs between two builds."""
    init = keras.initializers.GlorotUniform
    return keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(8, "sigmoid", kernel_initializer=init(1), name="hidden_1"),
        keras.layers.Dense(6, "sigmoid", kernel_initializer=init(2), name="hidden_2"),
        keras.layers.Dense(3, "softmax", kernel_initializer=init(3)),
    ], name=name)


def numpy_weights(layer):
    return [ops.convert_to_numpy(w) for w in layer.weights]


class Capture(keras.callbacks.Callback):
    """Keeps the model `fit` trains (the auxiliary model) and its initial weights."""

    def on_train_begin(self, logs=None):
        self.phase = self.model
        self.initial = {v.path: ops.convert_to_numpy(v).copy() for v in self.model.weights}


class LossTest(TestCase):
    def test_loss_of_a_batch_against_numpy_tied_sigmoid(self):
        model = three_layers()
        trainer = DenoisingPretraining("hidden_2", corruption=None)
        phase = trainer.auxiliary_model(model)
        w1, b1 = numpy_weights(model.get_layer("hidden_1"))
        w2, b2 = numpy_weights(model.get_layer("hidden_2"))
        c = RNG.normal(size=8).astype("float32")
        phase.decoder_bias.assign(c)
        clean, logits = phase(X, training=True)
        loss = phase.compute_loss(X, None, (clean, logits))
        t = sigmoid(X @ w1 + b1)
        h = sigmoid(t @ w2 + b2)
        p = sigmoid(h @ w2.T + c)
        self.assertAllClose(clean, t, atol=1e-6)
        self.assertAllClose(phase.reconstruct(X), p, atol=1e-6)
        self.assertAllClose(loss, numpy_bce(t, p), atol=1e-5, rtol=1e-5)
        # The same for the function itself, and with sample weights (the
        # weighted sum over the batch divided by the batch size).
        weights = (np.arange(64) % 2).astype("float32")
        per_example = -np.sum(t * np.log(p) + (1 - t) * np.log(1 - p), axis=1)
        self.assertAllClose(reconstruction_loss(clean, logits, sample_weight=weights),
                            np.sum(per_example * weights) / 64, atol=1e-5, rtol=1e-5)

    def test_evaluation_is_without_corruption_and_training_corrupts(self):
        model = three_layers()
        w1, b1 = numpy_weights(model.get_layer("hidden_1"))
        w2, b2 = numpy_weights(model.get_layer("hidden_2"))
        t = sigmoid(X @ w1 + b1)
        # Validation (training=False) sees the clean input even with a
        # corruption that removes everything.
        phase = DenoisingPretraining("hidden_2", MaskingCorruption(1.0)).auxiliary_model(model)
        phase.compile(optimizer="sgd")
        clean_loss = numpy_bce(t, sigmoid(sigmoid(t @ w2 + b2) @ w2.T))
        got = phase.evaluate(X, batch_size=64, verbose=0, return_dict=True)["loss"]
        self.assertAllClose(got, clean_loss, atol=1e-5, rtol=1e-5)
        # In training the encoder sees the corrupted (all-zero) input, and
        # the target is still the clean one.
        clean, logits = phase(X, training=True)
        p = sigmoid(sigmoid(np.zeros_like(t) @ w2 + b2) @ w2.T)
        self.assertAllClose(clean, t, atol=1e-6)
        self.assertAllClose(phase.compute_loss(X, None, (clean, logits)), numpy_bce(t, p),
                            atol=1e-5, rtol=1e-5)

    def test_untied_mse_against_numpy(self):
        model = three_layers()
        trainer = DenoisingPretraining("hidden_1", loss="mse", tied_weights=False, seed=3)
        phase = trainer.auxiliary_model(model)
        w1, b1 = numpy_weights(model.get_layer("hidden_1"))
        wd, bd = numpy_weights(phase.decoder)
        self.assertEqual(wd.shape, (8, 20))
        clean, logits = phase(X, training=True)
        z = sigmoid(X @ w1 + b1) @ wd + bd  # linear reconstruction of the input itself
        self.assertAllClose(clean, X)
        self.assertAllClose(phase.reconstruct(X), z, atol=1e-5)
        self.assertAllClose(phase.compute_loss(X, None, (clean, logits)),
                            np.mean(np.sum((X - z) ** 2, axis=1)), atol=1e-4, rtol=1e-5)
        # The decoder's initial weights depend on the seed only.
        again = trainer.auxiliary_model(three_layers())
        self.assertAllEqual(numpy_weights(again.decoder)[0], wd)


class TrainingTest(TestCase):
    def test_one_sgd_step_against_the_hand_gradient(self):
        model = three_layers()
        w1, b1 = numpy_weights(model.get_layer("hidden_1"))
        w2, b2 = numpy_weights(model.get_layer("hidden_2"))
        c = np.zeros(8, "float32")
        capture = Capture()
        lr = 0.1
        trainer = DenoisingPretraining("hidden_2", optimizer=keras.optimizers.SGD(lr))
        history = trainer.fit(model, X, batch_size=64, epochs=1, shuffle=False, verbose=0,
                              callbacks=[capture])
        # By hand: t = s(x W1 + b1), h = s(t W2 + b2), a = h W2ᵀ + c,
        # L = mean_n Σ_i softplus(a) - t a.
        n = len(X)
        t = sigmoid(X @ w1 + b1)
        h = sigmoid(t @ w2 + b2)
        a = h @ w2.T + c
        d_a = (sigmoid(a) - t) / n
        d_z = (d_a @ w2) * h * (1 - h)
        g_w = d_a.T @ h + t.T @ d_z  # decoder path + encoder path of the tied kernel
        self.assertAllClose(history.history["loss"][0], numpy_bce(t, sigmoid(a)),
                            atol=1e-5, rtol=1e-5)
        w2_new, b2_new = numpy_weights(model.get_layer("hidden_2"))
        self.assertAllClose(w2_new, w2 - lr * g_w, atol=1e-6, rtol=1e-5)
        self.assertAllClose(b2_new, b2 - lr * d_z.sum(0), atol=1e-6, rtol=1e-5)
        self.assertAllClose(capture.phase.decoder_bias, c - lr * d_a.sum(0), atol=1e-6,
                            rtol=1e-5)
        self.assertEqual(capture.phase.name, "denoising_hidden_2")

    def test_layer_2_trains_and_nothing_else_changes(self):
        model = three_layers()
        model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
        before = [w.copy() for w in model.get_weights()]
        flags = [v.trainable for v in model.variables]
        trainer = DenoisingPretraining("hidden_2", corruption=SaltAndPepper(0.25, seed=1))
        history = trainer.fit(model, X, Y, batch_size=16, epochs=6, verbose=0)
        after = model.get_weights()
        changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
        # hidden_1 (kernel, bias) and the output layer bit for bit; hidden_2 trained.
        self.assertEqual(changed, [False, False, True, True, False, False])
        losses = history.history["loss"]
        self.assertLess(losses[-1], losses[0])
        # The model's trainable flags and its own optimizer are untouched.
        self.assertEqual([v.trainable for v in model.variables], flags)
        self.assertFalse(model.optimizer.built)

    def test_untied_decoder_trains_the_first_layer(self):
        model = three_layers()
        before = [w.copy() for w in model.get_weights()]
        optimizer = {"class_name": "SGD", "config": {"learning_rate": 0.05}}
        trainer = DenoisingPretraining("hidden_1", MaskingCorruption(0.25, seed=2), loss="mse",
                                       tied_weights=False, optimizer=optimizer)
        history = trainer.fit(model, X, batch_size=16, epochs=5, verbose=0,
                              validation_data=(X, Y))
        self.assertLess(history.history["loss"][-1], history.history["loss"][0])
        self.assertIn("val_loss", history.history)
        after = model.get_weights()
        self.assertEqual([not np.array_equal(a, b) for a, b in zip(before, after)],
                         [True, True, False, False, False, False])

    def test_functional_and_nested_models(self):
        init = keras.initializers.GlorotUniform
        inputs = keras.Input((20,))
        a = keras.layers.Dense(8, "sigmoid", kernel_initializer=init(1), name="a")(inputs)
        side = keras.layers.Dense(4, name="side")(inputs)
        b = keras.layers.Dense(6, "sigmoid", kernel_initializer=init(2), name="b")(a)
        outputs = keras.layers.Dense(2, "softmax", name="out")(
            keras.layers.Concatenate()([b, side]))
        functional = keras.Model(inputs, outputs)
        block = keras.Sequential([keras.layers.Dense(5, "sigmoid", name="inner_1"),
                                  keras.layers.Dense(4, "sigmoid", name="inner_2")],
                                 name="block")
        nested = keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, "sigmoid",
                                                                          name="first"),
                                   block, keras.layers.Dense(2, "softmax")])
        for model, name, below in ((functional, "b", "a"), (nested, "block/inner_2", "first")):
            before = {w.path: ops.convert_to_numpy(w).copy() for w in model.weights}
            trainer = DenoisingPretraining(name, optimizer=keras.optimizers.SGD(0.1))
            phase = trainer.auxiliary_model(model)
            # The clean input is the output of the layers below.
            expected = sigmoid(X @ numpy_weights(model.get_layer(below))[0]
                               + numpy_weights(model.get_layer(below))[1])
            if model is nested:
                w, bias = numpy_weights(block.get_layer("inner_1"))
                expected = sigmoid(expected @ w + bias)
            self.assertAllClose(phase(X)[0], expected, atol=1e-6)
            trainer.fit(model, X, batch_size=32, epochs=2, verbose=0)
            target = trainer.target_layer(model)
            own = {w.path for w in target.weights}
            for w in model.weights:
                same = np.array_equal(before[w.path], ops.convert_to_numpy(w))
                self.assertEqual(same, w.path not in own, w.path)


def interrupt_at(epoch):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise KeyboardInterrupt(f"stopped before epoch {epoch}")

    return Interrupt()


def stages(interrupt=None):
    extra = [] if interrupt is None else [interrupt]
    return [
        Stage("pretrain_1", epochs=3, trainer=DenoisingPretraining(
            "hidden_1", corruption=SaltAndPepper(0.25, seed=1))),
        Stage("pretrain_2", epochs=4, callbacks=extra, trainer=DenoisingPretraining(
            "hidden_2", corruption=SaltAndPepper(0.25, seed=2), tied_weights=False)),
        Stage("finetune", epochs=3),
    ]


def compiled():
    model = three_layers()
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    return model


class Epochs(keras.callbacks.Callback):
    """Records ``(model name, epoch)`` of every epoch that runs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append((self.model.name, epoch))


class StagesTest(TestCase):
    def test_stacked_pretraining_resumes_with_identical_weights(self):
        base = self.get_temp_dir()
        first = compiled()
        initial = [w.copy() for w in first.get_weights()]
        results = fit_stages(first, stages(), (X, Y), batch_size=16, seed=1,
                             checkpoint_dir=f"{base}/a")
        self.assertEqual([r.epochs for r in results], [3, 4, 3])
        self.assertTrue(all(np.isfinite(r.best_train_loss) for r in results))
        # Pre-training logs the reconstruction loss, one row per epoch
        # (CSVLogger adds an "NA" val_loss column without validation data).
        self.assertEqual([row["epoch"] for row in results[1].history], [0, 1, 2, 3])
        self.assertLess(results[1].history[-1]["loss"], results[1].history[0]["loss"])
        final = first.get_weights()
        self.assertTrue(all(not np.array_equal(a, b) for a, b in zip(initial, final)))

        # A fresh, identical model in the same folder: every stage is skipped.
        again = compiled()
        resumed = fit_stages(again, stages(), (X, Y), batch_size=16, seed=1,
                             checkpoint_dir=f"{base}/a")
        self.assertEqual([r.resumed for r in resumed], [True, True, True])
        for a, b in zip(final, again.get_weights()):
            self.assertAllEqual(a, b)

        # Interrupted inside the second pre-training stage, then resumed by a
        # fresh model (new layer names) from the auxiliary model's checkpoint:
        # the numbers of the uninterrupted run.
        with pytest.raises(KeyboardInterrupt):
            fit_stages(compiled(), stages(interrupt_at(2)), (X, Y), batch_size=16, seed=1,
                       checkpoint_dir=f"{base}/b")
        self.assertEqual(len(list((Path(base) / "b" / "stage-1").glob("*.weights.h5"))), 1)
        later = compiled()
        logs, epochs = [], Epochs()
        fit_stages(later, stages(), (X, Y), batch_size=16, seed=1,
                   checkpoint_dir=f"{base}/b", log=logs.append, observers=[epochs])
        self.assertIn("already finished", logs[0])
        # Stage 1 went on from its checkpoint (epochs 2 and 3 only).
        self.assertEqual(epochs.seen, [("denoising_hidden_2", 2), ("denoising_hidden_2", 3),
                                       (later.name, 0), (later.name, 1), (later.name, 2)])
        for a, b in zip(final, later.get_weights()):
            self.assertAllEqual(a, b)


class ConfigTest(TestCase):
    def test_config_round_trip_and_registration(self):
        trainer = DenoisingPretraining("hidden_2", SaltAndPepper(0.25, seed=1), loss="mse",
                                       tied_weights=False, optimizer=keras.optimizers.SGD(0.3),
                                       seed=5)
        config = trainer.get_config()
        copy = DenoisingPretraining.from_config(config)
        self.assertEqual(copy.get_config(), config)
        self.assertIsInstance(copy.corruption, SaltAndPepper)
        self.assertEqual((copy.corruption.rate, copy.corruption.seed), (0.25, 1))
        self.assertAllClose(copy._new_optimizer(None).learning_rate, 0.3)
        self.assertIs(export.registry()["DenoisingPretraining"], DenoisingPretraining)
        self.assertIs(keras.saving.get_registered_object("deepkit>DenoisingPretraining"),
                      DenoisingPretraining)
        plain = DenoisingPretraining("hidden_1")
        self.assertEqual(plain.get_config(), {
            "layer": "hidden_1", "corruption": None, "loss": "binary_crossentropy",
            "tied_weights": True, "optimizer": None, "seed": 0})
        named = DenoisingPretraining("h", corruption={"SaltAndPepper": {"rate": 0.1}})
        self.assertIsInstance(named.corruption, SaltAndPepper)

    def test_recipe_names_it(self):
        from deepkit.recipe import names
        from deepkit.recipe.schema import object_spec

        spec = object_spec({"DenoisingPretraining": {
            "layer": "hidden_1", "corruption": {"SaltAndPepper": {"rate": 0.25, "seed": 1}},
            "optimizer": {"SGD": {"learning_rate": 0.2}}}}, "fit.trainer", None)
        trainer = names.build("trainer", spec)
        self.assertIsInstance(trainer, DenoisingPretraining)
        self.assertIsInstance(trainer.corruption, SaltAndPepper)
        self.assertEqual(trainer.corruption.rate, 0.25)
        self.assertAllClose(trainer._new_optimizer(None).learning_rate, 0.2)

    def test_clear_errors(self):
        model = three_layers()
        with self.assertRaisesRegex(ValueError, r"no layer 'hidden_9'.*hidden_1, hidden_2"):
            DenoisingPretraining("hidden_9").fit(model, X, epochs=1)
        with self.assertRaisesRegex(ValueError, r"no layer 'hidden_1/x'"):
            DenoisingPretraining("hidden_1/x").fit(model, X, epochs=1)
        with_dropout = keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, name="d"),
                                         keras.layers.Dropout(0.5, name="drop")])
        with self.assertRaisesRegex(ValueError, r"'drop' is a Dropout, not a Dense.*: d$"):
            DenoisingPretraining("drop").fit(with_dropout, X, epochs=1)
        unbuilt = keras.Sequential([keras.layers.Dense(8, name="d")])
        with self.assertRaisesRegex(ValueError, "not built"):
            DenoisingPretraining("d").fit(unbuilt, X, epochs=1)
        with self.assertRaisesRegex(ValueError, "loss must be one of"):
            DenoisingPretraining("d", loss="hinge")
        with self.assertRaisesRegex(ValueError, "corruption must be"):
            DenoisingPretraining("d", corruption=0.25)

        class Subclassed(keras.Model):
            def __init__(self):
                super().__init__()
                self.first = keras.layers.Dense(8, name="first")
                self.second = keras.layers.Dense(4, name="second")

            def call(self, x):
                return self.second(self.first(x))

        subclassed = Subclassed()
        subclassed(X)
        with self.assertRaisesRegex(ValueError, "subclassed"):
            DenoisingPretraining("second").fit(subclassed, X, epochs=1)


def test_the_docstring_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", inspect.getdoc(DenoisingPretraining), re.S)
    runnable = [b for b in blocks if "import keras" in b]
    assert len(runnable) == 1
    exec(compile(runnable[0], "<DenoisingPretraining example>", "exec"), {})
    assert "pretrain_2" in capsys.readouterr().out
