"""Tests for deepkit.models.structured_mlp.StructuredMLP (P1NN per block, P2NN on top)."""

import inspect
import os

import keras
import numpy as np
from keras import ops

from deepkit.datasets import pentomino
from deepkit.models.structured_mlp import StructuredMLP
from deepkit.testing import TestCase
from deepkit.training import LinearRamp, LossWeightScheduler, ScheduledLoss

DATA = pentomino.generate(200, seed=0)
IMAGES = DATA.images.astype("float32")
TARGETS = {"hints": DATA.hints, "label": DATA.labels}


def small(**kwargs):
    config = dict(p1nn_units=(16,), p2nn_units=(8,), seed=1)
    config.update(kwargs)
    return StructuredMLP(**config)


def numpy_weights(layer):
    return [ops.convert_to_numpy(w) for w in layer.weights]


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numpy_forward(model, images, standardize=None):
    """The model's two outputs computed by hand (one hidden layer each)."""
    w1, b1, w2, b2 = numpy_weights(model.p1nn)
    blocks = pentomino.to_blocks(images).astype("float64")
    hints = softmax(np.maximum(blocks @ w1 + b1, 0.0) @ w2 + b2)
    features = hints.reshape(len(images), -1)
    if standardize == "batch":
        # The batch's mean and standard deviation per feature; a feature equal
        # in every image (an empty block) passes unchanged. Deviations from
        # the first image make its spread exactly zero, in float64 too.
        deviations = features - features[:1]
        centred = deviations - deviations.mean(axis=0)
        std = np.sqrt((centred ** 2).mean(axis=0))
        features = np.where(std > 0, centred / np.where(std > 0, std, 1.0), features)
    w3, b3, w4, b4 = numpy_weights(model.p2nn)
    label = 1.0 / (1.0 + np.exp(-(np.tanh(features @ w3 + b3) @ w4 + b4)))
    return hints, label


def compiled(model, **compile_kwargs):
    kwargs = dict(loss={"hints": "sparse_categorical_crossentropy",
                        "label": "binary_crossentropy"},
                  loss_weights={"hints": 1.0, "label": 1.0})
    kwargs.update(compile_kwargs)
    model.compile(keras.optimizers.SGD(0.1), **kwargs)
    return model


class StructuredMLPTest(TestCase):
    def test_output_shapes_for_images_flat_images_blocks_and_symbolic_inputs(self):
        model = small()
        out = model(IMAGES[:5])
        self.assertEqual(sorted(out), ["hints", "label"])
        self.assertEqual(tuple(out["hints"].shape), (5, 64, 11))
        self.assertEqual(tuple(out["label"].shape), (5, 1))
        flat = model(IMAGES[:5].reshape(5, -1))
        self.assertAllClose(flat["hints"], out["hints"])
        self.assertAllClose(flat["label"], out["label"])
        blocked = small(input_layout="blocks")
        blocked(pentomino.to_blocks(IMAGES[:1]))
        blocked.set_weights(model.get_weights())
        from_blocks = blocked(pentomino.to_blocks(IMAGES[:5]))
        self.assertAllClose(from_blocks["hints"], out["hints"])
        self.assertAllClose(from_blocks["label"], out["label"])
        self.assertAllEqual(model.blocks(IMAGES[:3]), pentomino.to_blocks(IMAGES[:3]))
        symbolic = small()(keras.Input((64, 64)))
        self.assertEqual(tuple(symbolic["hints"].shape), (None, 64, 11))
        self.assertEqual(tuple(symbolic["label"].shape), (None, 1))
        self.assertEqual(model.compute_output_shape((5, 64, 64)),
                         {"hints": (5, 64, 11), "label": (5, 1)})

    def test_blocks_share_p1nns_weights(self):
        model = small()
        image = np.zeros((1, 64, 64), "float32")
        sprite = pentomino.sprite("F", rotation=1, scale=2)
        for block in (3, 42):  # row 0 column 3, row 5 column 2
            r, c = 8 * (block // 8), 8 * (block % 8)
            image[0, r:r + sprite.shape[0], c:c + sprite.shape[1]] = sprite
        hints = ops.convert_to_numpy(model(image)["hints"])[0]
        self.assertAllClose(hints[3], hints[42], atol=0, rtol=0)
        self.assertAllClose(hints[0], hints[63], atol=0, rtol=0)  # two empty blocks
        self.assertGreater(np.abs(hints[3] - hints[0]).max(), 1e-4)
        self.assertEqual(len(model.p1nn.weights), 4)  # one set of weights for 64 blocks

    def test_outputs_equal_numpy_by_hand(self):
        for standardize in (None, "batch"):
            model = small(standardize=standardize)
            out = model(IMAGES[:6])
            hints, label = numpy_forward(model, IMAGES[:6], standardize)
            self.assertAllClose(out["hints"], hints, atol=1e-5, rtol=1e-5)
            self.assertAllClose(out["label"], label, atol=1e-5, rtol=1e-5)
            # One block of one image, on its own: P1NN's 64 -> 16 ReLU -> 11 softmax.
            w1, b1, w2, b2 = numpy_weights(model.p1nn)
            block = pentomino.to_blocks(IMAGES[:1])[0, 27].astype("float64")
            self.assertAllClose(ops.convert_to_numpy(out["hints"])[0, 27],
                                softmax(np.maximum(block @ w1 + b1, 0) @ w2 + b2), atol=1e-6)

    def test_fit_with_the_two_named_outputs_on_a_tiny_pentomino_set(self):
        model = compiled(small(standardize="moving"), metrics={"label": ["accuracy"]})
        history = model.fit(IMAGES, TARGETS, batch_size=50, epochs=2, verbose=0)
        for key in ("loss", "hints_loss", "label_loss", "label_accuracy"):
            self.assertIn(key, history.history)
            self.assertTrue(np.all(np.isfinite(history.history[key])))
        self.assertLess(history.history["hints_loss"][-1], history.history["hints_loss"][0])
        self.assertEqual(int(model.optimizer.iterations), 8)

    def test_freezing_p1nn_keeps_its_weights_bit_for_bit(self):
        model = small(standardize="batch")
        model(IMAGES[:1])
        p1nn_before = numpy_weights(model.p1nn)
        p2nn_before = numpy_weights(model.p2nn)
        model.p1nn.trainable = False
        compiled(model, loss={"hints": None, "label": "binary_crossentropy"},
                 loss_weights=None)
        model.fit(IMAGES, TARGETS, batch_size=50, epochs=1, verbose=0)
        for before, after in zip(p1nn_before, numpy_weights(model.p1nn)):
            np.testing.assert_array_equal(before, after)
        self.assertTrue(any(np.abs(b - a).max() > 0
                            for b, a in zip(p2nn_before, numpy_weights(model.p2nn))))

    def test_joint_training_with_an_annealed_hint_weight(self):
        model = compiled(small(p1nn_output_activation="linear"), loss={
            "hints": ScheduledLoss(keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                   LinearRamp(1.0, 0.1, start_step=1, end_step=3)),
            "label": ScheduledLoss("binary_crossentropy",
                                   LinearRamp(0.0, 0.9, start_step=1, end_step=3))},
            loss_weights=None)
        history = model.fit(IMAGES, TARGETS, batch_size=100, epochs=2, verbose=0,
                            callbacks=[LossWeightScheduler()])
        self.assertAllClose(history.history["hints_loss_weight"], [0.55, 0.1], atol=1e-6)
        self.assertAllClose(history.history["label_loss_weight"], [0.45, 0.9], atol=1e-6)

    def test_config_round_trip(self):
        model = small(p1nn_units=(12, 10), p2nn_units=(6, 4), standardize="moving",
                      p2nn_activation="relu",
                      kernel_regularizer=keras.regularizers.L1L2(1e-6, 1e-5))
        config = self.assertConfigRoundTrip(model)
        self.assertEqual(config["p1nn_units"], [12, 10])
        clone = StructuredMLP.from_config(config)
        self.assertEqual(len(clone.p1nn.layers), 3)
        self.assertEqual(len(clone.p2nn.layers), 4)  # standardization, 2 hidden, output

    def test_save_and_load_give_identical_outputs(self):
        trained = compiled(small(standardize="moving"))  # moving statistics to keep
        trained.fit(IMAGES[:100], {k: v[:100] for k, v in TARGETS.items()}, batch_size=50,
                    epochs=1, verbose=0)
        for model in (trained, small(standardize="batch"), small(p1nn_units=(8, 8))):
            path = os.path.join(self.get_temp_dir(), "smlp.keras")
            model(IMAGES[:1])
            model.save(path)
            loaded = keras.saving.load_model(path, safe_mode=True)
            self.assertIsInstance(loaded, StructuredMLP)
            self.assertEqual(loaded.get_config(), model.get_config())
            expected, found = model(IMAGES[:40]), loaded(IMAGES[:40])
            for key in ("hints", "label"):
                self.assertAllClose(found[key], expected[key], atol=0, rtol=0)

    def test_bad_arguments_are_refused(self):
        for kwargs in ({"standardize": "layer"}, {"input_layout": "pixels"},
                       {"p1nn_units": (16, 0)}, {"block_size": 0}):
            with self.assertRaises(ValueError):
                small(**kwargs)
        with self.assertRaises(ValueError):
            small()(np.zeros((2, 60, 60), "float32"))

    def test_every_init_argument_is_documented(self):
        doc = inspect.getdoc(StructuredMLP)
        args = doc.split("Args:")[1].split("Call arguments:")[0]
        for name in inspect.signature(StructuredMLP.__init__).parameters:
            if name != "self":
                self.assertIn(f"\n    {'**' if name == 'kwargs' else ''}{name}:", args)
        for section in ("Example:", "Reference:", "arXiv:1301.4083"):
            self.assertIn(section, doc)
