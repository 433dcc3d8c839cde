"""SampleGrid: a PNG of the expected size every N epochs, the same picture from
the same seed and weights, the TensorBoard image summary, its config, its
argument checks; the tiling helpers."""

import importlib.util
import json

import keras
import numpy as np
import pytest
from PIL import Image

from deepkit.callbacks import SampleGrid
from deepkit.callbacks.sample_grid import interleave_rows, tile_images
from deepkit.models import DenoisingAutoencoder

RNG = np.random.default_rng(0)
IMAGES = (RNG.uniform(size=(40, 16)) > 0.6).astype("float32")  # 4 x 4 "digits"


def _model():
    model = DenoisingAutoencoder(units=8, walkback_steps=2, seed=3)
    model.compile(keras.optimizers.SGD(0.5))
    return model


def _png(path):
    with Image.open(path) as image:
        image.load()
        return image.mode, image.size, np.asarray(image)


def test_writes_a_grid_every_n_epochs(tmp_path):
    grid = SampleGrid(every=2, chains=3, steps=5, columns=4, seed=7, directory=str(tmp_path))
    model = _model()
    model.fit(IMAGES, epochs=4, batch_size=10, verbose=0, callbacks=[grid])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "samples_epoch_0002.png", "samples_epoch_0004.png"]
    mode, size, pixels = _png(tmp_path / "samples_epoch_0004.png")
    # 4 columns and 3 rows of 4 x 4 tiles, one grey pixel between and around them.
    assert mode == "L" and size == (4 * 5 + 1, 3 * 5 + 1)
    assert pixels[0, 0] == 128  # the grey padding
    # The last column is each chain's last step: the picture is the chain's mean p(x).
    last = model.sample(3, 5, seed=7)[:, -1].reshape(3, 4, 4)
    np.testing.assert_array_equal(pixels[1:5, 16:20], np.round(last[0] * 255).astype("uint8"))


def test_same_seed_and_weights_give_the_same_picture(tmp_path):
    model = _model()
    model.fit(IMAGES, epochs=1, batch_size=10, verbose=0)
    pictures = []
    for folder in ("a", "b"):
        grid = SampleGrid(chains=2, steps=3, columns=3, seed=5, directory=str(tmp_path / folder))
        grid.set_model(model)
        grid.on_train_begin()
        grid.on_epoch_end(0)
        pictures.append(_png(grid.written[0])[2])
    np.testing.assert_array_equal(pictures[0], pictures[1])
    other = SampleGrid(chains=2, steps=3, columns=3, seed=6, directory=str(tmp_path / "c"))
    other.set_model(model)
    other.on_epoch_end(0)
    assert not np.array_equal(_png(other.written[0])[2], pictures[0])


def test_writes_an_image_summary_to_a_log_dir(tmp_path):
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match="log_dir needs the tensorboard package"):
            SampleGrid(log_dir=str(tmp_path / "logs"))
        return
    grid = SampleGrid(chains=2, steps=2, columns=2, directory=str(tmp_path),
                      log_dir=str(tmp_path / "logs"))
    _model().fit(IMAGES, epochs=1, batch_size=20, verbose=0, callbacks=[grid])
    assert list((tmp_path / "logs" / "samples").glob("events.out.tfevents.*"))


def test_config_round_trip(tmp_path):
    grid = SampleGrid(every=3, chains=4, steps=9, columns=3, seed=2, directory=str(tmp_path),
                      filename="grid_{epoch}.png", image_shape=(2, 8), log_dir=None)
    serialized = keras.saving.serialize_keras_object(grid)
    assert serialized["registered_name"] == "deepkit>SampleGrid"
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert revived.get_config() == grid.get_config()


@pytest.mark.parametrize("arguments, message", [
    ({"every": 0}, "every must be a positive integer"),
    ({"chains": 1.5}, "chains must be a positive integer"),
    ({"steps": 3, "columns": 4}, r"columns \(4\) must not exceed steps \(3\)"),
    ({"filename": "grid.png"}, "must contain {epoch}"),
])
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        SampleGrid(**arguments)


def test_refuses_a_model_without_a_chain(tmp_path):
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="needs a model with a sampling chain"):
        model.fit(IMAGES, IMAGES, epochs=1, verbose=0,
                  callbacks=[SampleGrid(directory=str(tmp_path))])


def test_tile_and_interleave():
    images = np.linspace(0, 1, 5 * 6).reshape(5, 2, 3)
    grid = tile_images(images, columns=2, padding=1)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[1:3, 5:8], np.round(images[1] * 255))
    assert (grid[7:9, 5:8] == 128).all()  # the missing sixth tile is grey
    rows = interleave_rows(np.zeros((3, 4)), np.ones((3, 4)), columns=2)
    assert rows.shape == (8, 4)
    np.testing.assert_array_equal(rows[[0, 1, 4]], 0)
    np.testing.assert_array_equal(rows[[2, 3, 6]], 1)
    assert np.isnan(rows[[5, 7]]).all()
    with pytest.raises(ValueError, match="not a square image"):
        tile_images(np.zeros((2, 15)), columns=2)
