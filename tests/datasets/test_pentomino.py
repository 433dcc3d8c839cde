"""Tests for deepkit.datasets.pentomino and its TensorFlow Datasets builder.

Generated images are checked against the task's definition, written out
here independently of the generator (the sprites of caglar/Arcade-Universe
``sprites.py``, rotated by transposing and flipping as its ``Sprite.rotate``
does, scaled by repeating pixels): every hinted block holds exactly one
sprite of its class, every other block is empty, the three objects keep
their distance, the labels follow the hints; plus seeds and chunks, the
loader's layouts, the TFDS builder's arrays, and refused arguments.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deepkit import datasets
from deepkit.datasets import pentomino as P

NAMES = ("L", "N", "P", "F", "Y", "J", "N2", "Q", "F2", "Y2")
DRAWN = {
    "L": "x. x. x. xx", "N": ".x .x xx x.", "P": "xx xx x.", "F": ".xx xx. .x.",
    "Y": ".x xx .x .x", "J": ".x .x .x xx", "N2": "x. x. xx .x", "Q": "xx xx .x",
    "F2": "xx. .xx .x.", "Y2": "x. xx x. x.",
}
MIRRORS = {"J": "L", "N2": "N", "Q": "P", "F2": "F", "Y2": "Y"}


def _bitmap(name):
    return np.array([[c == "x" for c in row] for row in DRAWN[name].split()], dtype="uint8")


def _clockwise(bitmap):
    return bitmap.T[:, ::-1]  # Sprite.rotate(90): transpose, then flip left-right


def _variants():
    """uint8 [80, 8, 8] sprites at a block's top-left corner, with (class, rotation, scale)."""
    tiles, keys = [], []
    for c, name in enumerate(NAMES):
        bitmap = _bitmap(name)
        for r in range(4):
            for scale in (1, 2):
                big = bitmap.repeat(scale, axis=0).repeat(scale, axis=1)
                tile = np.zeros((8, 8), "uint8")
                tile[:big.shape[0], :big.shape[1]] = big
                tiles.append(tile)
                keys.append((c, r, scale))
            bitmap = _clockwise(bitmap)
    return np.array(tiles), np.array(keys)


VARIANTS, KEYS = _variants()


def _tiles(images):
    """[N, 64, 8, 8]: the blocks of each image, row-major."""
    n = len(images)
    return images.reshape(n, 8, 8, 8, 8).transpose(0, 1, 3, 2, 4).reshape(n, 64, 8, 8)


@pytest.fixture(scope="module")
def data():
    return P.generate(4000, seed=11)


@pytest.fixture(scope="module")
def matched(data):
    """Per image, the 3 hinted blocks and the (class, rotation, scale) drawn in each."""
    hints = data.hints
    n = len(hints)
    assert ((hints > 0).sum(axis=1) == 3).all(), "exactly 3 non-empty blocks"
    blocks = np.sort(np.argsort(hints == 0, axis=1, kind="stable")[:, :3], axis=1)
    tiles = _tiles(data.images)[np.arange(n)[:, None], blocks]  # [n, 3, 8, 8]
    equal = (tiles[:, :, None] == VARIANTS[None, None]).all(axis=(3, 4))  # [n, 3, 80]
    assert (equal.sum(axis=2) == 1).all(), "each hinted block holds exactly one of the 80 sprites"
    keys = KEYS[equal.argmax(axis=2)]  # [n, 3, (class, rotation, scale)]
    return blocks, keys


# -- the sprites ----------------------------------------------------------------------


def test_the_ten_shapes_are_the_authors_pentominoes_in_the_scripts_order():
    assert P.CLASS_NAMES == NAMES
    boxes = {"L": (4, 2), "J": (4, 2), "N": (4, 2), "N2": (4, 2), "Y": (4, 2), "Y2": (4, 2),
             "P": (3, 2), "Q": (3, 2), "F": (3, 3), "F2": (3, 3)}
    for c, name in enumerate(NAMES):
        np.testing.assert_array_equal(P.sprite(name), _bitmap(name))
        np.testing.assert_array_equal(P.sprite(c), _bitmap(name))
        assert _bitmap(name).sum() == 5 and _bitmap(name).shape == boxes[name]
    for mirror, shape in MIRRORS.items():
        np.testing.assert_array_equal(_bitmap(mirror), _bitmap(shape)[:, ::-1])
    # Rotation counts clockwise quarter turns; scale 2 makes each pixel 2x2.
    np.testing.assert_array_equal(P.sprite("L", 1), [[1, 1, 1, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(P.sprite("P", 2, 2), np.kron(
        [[0, 1], [1, 1], [1, 1]], np.ones((2, 2))))
    # No rotation of a shape equals a rotation of another: the hint is readable.
    seen = {VARIANTS[i].tobytes() for i in range(80)}
    assert len(seen) == 80


# -- generated images meet the definition ---------------------------------------------


def test_images_are_binary_64x64_with_int32_labels_and_hints(data):
    assert data.images.shape == (4000, 64, 64) and data.images.dtype == np.uint8
    assert set(np.unique(data.images)) == {0, 1}
    assert data.labels.shape == (4000,) and data.labels.dtype == np.int32
    assert data.hints.shape == (4000, 64) and data.hints.dtype == np.int32
    assert data.hints.min() == 0 and data.hints.max() == 10


def test_every_hint_matches_the_sprite_in_its_block_and_other_blocks_are_empty(data, matched):
    blocks, keys = matched
    rows = np.arange(len(blocks))[:, None]
    np.testing.assert_array_equal(data.hints[rows, blocks], keys[..., 0] + 1)
    tiles = _tiles(data.images)
    empty = data.hints == 0
    assert not tiles[empty].any(), "a block without a hint has pixels"
    # The image is exactly the three sprites: 3 objects, nothing else.
    redrawn = np.zeros_like(tiles)
    redrawn[rows, blocks] = VARIANTS[(keys[..., 0] * 4 + keys[..., 1]) * 2 + keys[..., 2] - 1]
    np.testing.assert_array_equal(redrawn, tiles)


def test_there_are_exactly_three_objects_by_connected_components(data):
    ndimage = pytest.importorskip("scipy.ndimage")
    for image in data.images[:300]:
        _, count = ndimage.label(image, structure=np.ones((3, 3)))
        assert count == 3


def _pixel_sets(blocks, keys):
    """[n, 3, 20, 2] pixel coordinates of each object (padded with a far sentinel)."""
    n = len(blocks)
    coords = np.full((n, 3, 20, 2), -1000)
    for index in range(80):
        ys, xs = np.nonzero(VARIANTS[index])
        c, r, s = KEYS[index]
        where = (keys[..., 0] == c) & (keys[..., 1] == r) & (keys[..., 2] == s)
        image, obj = np.nonzero(where)
        top, left = np.divmod(blocks[image, obj], 8)
        coords[image, obj, :len(ys), 0] = 8 * top[:, None] + ys
        coords[image, obj, :len(ys), 1] = 8 * left[:, None] + xs
    return coords


def test_objects_never_overlap_or_touch_and_keep_the_authors_margins(matched):
    blocks, keys = matched
    assert (np.diff(blocks, axis=1) > 0).all(), "three distinct blocks"
    coords = _pixel_sets(blocks, keys)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        pa, pb = coords[:, a, :, None], coords[:, b, None, :]
        real = (pa[..., 0] > -1000) & (pb[..., 0] > -1000)
        chebyshev = np.where(real, np.abs(pa - pb).max(axis=-1), 10 ** 6).min(axis=(1, 2))
        # Not touching in the 8-neighbourhood: masks grown by one pixel do not overlap.
        assert (chebyshev >= 2).all()
        # The code's rule: masks grown by one pixel per unit of scale do not overlap.
        assert (chebyshev > keys[:, a, 2] + keys[:, b, 2]).all()
    # Neighbouring blocks do occur (the check is not vacuous).
    rows, cols = np.divmod(blocks, 8)
    assert ((np.abs(rows[:, 0] - rows[:, 1]) <= 1) & (np.abs(cols[:, 0] - cols[:, 1]) <= 1)).any()


def test_labels_are_balanced_and_follow_the_classes(data, matched):
    _, keys = matched
    classes = np.sort(keys[..., 0], axis=1)
    distinct = 1 + (classes[:, 1] != classes[:, 0]) + (classes[:, 2] != classes[:, 1])
    same = data.labels == 1
    assert (distinct[same] == 1).all(), "label 1: all three the same class"
    assert (distinct[~same] == 2).all(), "label 0: exactly two share a class"
    # A fair coin: 4,000 draws, 3 standard deviations = 2.4 points.
    assert abs(same.mean() - 0.5) < 0.024


def test_classes_rotations_and_scales_are_spread_as_drawn(matched):
    _, keys = matched
    flat = keys.reshape(-1, 3)
    assert np.bincount(flat[:, 0], minlength=10).min() > 0.08 * len(flat)
    for r in range(4):
        assert 0.22 < np.mean(flat[:, 1] == r) < 0.28
    # x2 sprites are redrawn a little more often (they come closer to their neighbours).
    assert 0.44 < np.mean(flat[:, 2] == 2) < 0.52


# -- seeds, splits and chunks ---------------------------------------------------------


def test_the_seed_fixes_the_arrays_and_different_seeds_differ():
    first, again, other = P.generate(300, seed=3), P.generate(300, seed=3), P.generate(300, seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.images, other.images)
    assert not np.array_equal(first.hints, other.hints)
    test = P.generate(300, seed=3, split="test")
    assert not np.array_equal(first.images, test.images)


def test_image_i_depends_only_on_seed_split_and_i():
    # Whatever the cuts, the pieces make the same sequence (chunks of 1,000).
    whole = P.generate(2600, seed=2, split="valid")
    cuts = [0, 700, 999, 1000, 1001, 1999, 2600]
    pieces = [P.generate(b - a, seed=2, split="valid", start=a) for a, b in zip(cuts, cuts[1:])]
    for field, full in zip(P.Pentomino._fields, whole):
        np.testing.assert_array_equal(np.concatenate([getattr(p, field) for p in pieces]), full)
    # One image alone, and an empty range.
    alone = P.generate(1, seed=2, split="valid", start=1500)
    np.testing.assert_array_equal(alone.images[0], whole.images[1500])
    assert P.generate(0, seed=2).images.shape == (0, 64, 64)


def test_smaller_training_sets_are_prefixes_of_larger_ones():
    small = datasets.load("pentomino", "train", train_size=1200, seed=5, dtype="uint8")
    large = datasets.load("pentomino", "train", train_size=2100, seed=5, dtype="uint8")
    np.testing.assert_array_equal(small[0], large[0][:1200])
    np.testing.assert_array_equal(small[1], large[1][:1200])


# -- the registered loader ------------------------------------------------------------


def test_the_loader_is_registered_and_gives_each_layout_and_target():
    assert "pentomino" in datasets.names()
    assert datasets.required_files("pentomino") == []
    reference = P.generate(50, seed=1, split="test")
    x, y = datasets.load("pentomino", "test", test_size=50, seed=1)
    assert x.shape == (50, 64, 64, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], reference.images)
    np.testing.assert_array_equal(y, reference.labels)
    flat, hints = datasets.load("pentomino", "test", test_size=50, seed=1, layout="flat",
                                target="hints", dtype="uint8")
    assert flat.shape == (50, 4096) and flat.dtype == np.uint8
    np.testing.assert_array_equal(flat.reshape(50, 64, 64), reference.images)
    np.testing.assert_array_equal(hints, reference.hints)
    blocks, _ = datasets.load("pentomino", "test", test_size=50, seed=1, layout="blocks")
    assert blocks.shape == (50, 64, 64)
    np.testing.assert_array_equal(blocks.reshape(50, 64, 8, 8), _tiles(reference.images))
    np.testing.assert_array_equal(blocks.any(axis=2), reference.hints > 0)
    assert datasets.load("pentomino", "valid") is None
    xv, _ = datasets.load("pentomino", "valid", validation=20)
    assert xv.shape == (20, 64, 64, 1)


def test_importing_the_registry_does_not_import_tensorflow_datasets():
    code = ("import sys; from deepkit import datasets; datasets.names(); "
            "datasets.load('pentomino', 'test', test_size=2); "
            "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("call, match", [
    (lambda: P.generate(-1), "size must be >= 0"),
    (lambda: P.generate(10, seed=-1), "seed must be >= 0"),
    (lambda: P.generate(10, seed=1.5), "seed must be an integer"),
    (lambda: P.generate(True), "size must be an integer"),
    (lambda: P.generate(10, start=-3), "start must be >= 0"),
    (lambda: P.generate(10, split="validation"), "unknown split 'validation'"),
    (lambda: P.sprite("T"), "unknown shape 'T'"),
    (lambda: P.sprite(10), r"shape must be in \[0, 9\]"),
    (lambda: P.sprite("L", 4), r"rotation must be in \[0, 3\]"),
    (lambda: P.sprite("L", 0, 3), "scale must be 1 or 2"),
    (lambda: P.to_blocks(np.zeros((2, 32, 32))), r"images \[N, 64, 64\]"),
    (lambda: datasets.load("pentomino", "train", train_size=0), "train_size must be >= 1"),
    (lambda: datasets.load("pentomino", "test", layout="grid"), "layout must be one of"),
    (lambda: datasets.load("pentomino", "test", target="class"), "target must be one of"),
    (lambda: datasets.load("pentomino", "test", dtype="float64"), "dtype must be one of"),
])
def test_bad_arguments_raise_a_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- the TensorFlow Datasets builder --------------------------------------------------


def test_the_tfds_builder_writes_the_numpy_arrays_and_loads_offline(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from deepkit.datasets import pentomino_tfds as PT

    configs = {c.name: (c.train_size, c.test_size, c.seed) for c in PT.Pentomino.BUILDER_CONFIGS}
    assert configs == {"20k": (20000, 20000, 0), "40k": (40000, 20000, 0),
                       "80k": (80000, 20000, 0)}
    with pytest.raises(ValueError, match="train_size must be >= 1"):
        PT.PentominoConfig(name="bad", train_size=0)

    config = PT.PentominoConfig(name="tiny", train_size=1100, test_size=40, seed=7)
    PT.prepare(config, data_dir=str(tmp_path))
    for split, size in (("train", 1100), ("test", 40)):
        loaded = tfds.as_numpy(tfds.load("pentomino/tiny", split=split, data_dir=str(tmp_path),
                                          batch_size=-1))
        expected = P.generate(size, seed=7, split=split)
        np.testing.assert_array_equal(loaded["image"], expected.images)
        np.testing.assert_array_equal(loaded["label"], expected.labels)
        np.testing.assert_array_equal(loaded["hints"], expected.hints)
        assert loaded["image"].dtype == np.uint8 and loaded["hints"].dtype == np.int32

    # A process that never imports deepkit reads the prepared files (TFDS' read-only builder).
    code = textwrap.dedent(f"""
        import sys
        import tensorflow_datasets as tfds
        images, labels = tfds.as_numpy(tfds.load("pentomino/tiny", split="test",
            data_dir={str(tmp_path)!r}, batch_size=-1, as_supervised=True))
        assert not any(m.startswith("deepkit") for m in sys.modules)
        print(images.shape, int(labels.sum()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = P.generate(40, seed=7, split="test")
    assert out.stdout.split("\n")[-2] == f"(40, 64, 64) {int(expected.labels.sum())}"
