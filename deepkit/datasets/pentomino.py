"""Pentomino: Gulcehre & Bengio's task where black-box learners stay at chance.

A 64×64 binary image shows three pentomino sprites; the label says whether
all three have the same shape. `generate` makes the images, their labels and
the per-block hints in numpy; `load("pentomino", split, ...)` is the
registered loader; `deepkit.datasets.pentomino_tfds` is the same data as a
TensorFlow Datasets builder.

Every generation parameter, and where it comes from. "Protocol" is
``shared/PROTOCOLS.md``, section Pentomino; "the code" is the authors'
``caglar/Arcade-Universe`` at commit bccc9905 (``arcade_universe/``:
``sprites.py``, ``sprite.py``, ``gen.py`` class ``TwoGroups``,
``pdataset.py`` class ``SpritePlacer``, the script
``premade_pento64x64_64patches.py``), as cited by the protocol beside
``caglar/structured_mlp``, ``caglar/prmlp``, ``caglar/PentominoExps`` and
``caglar/kmatters``, which read these files.

- **Image**: 64×64 pixels, background 0, object 1, no noise, no texture
  (protocol; the script's ``plain`` foreground and background). An 8×8 grid
  of 8×8-pixel blocks; block ``b`` is row ``b // 8``, column ``b % 8``
  (pixels ``8 * (b // 8) + [0, 8)`` down, ``8 * (b % 8) + [0, 8)`` across).
- **Shapes**: 10 classes, numbered in the script's order
  ``pentl/pentn/pentp/pentf/penty/pentj/pentn2/pentq/pentf2/penty2``: 0 L,
  1 N, 2 P, 3 F, 4 Y, 5 J, 6 N2, 7 Q, 8 F2, 9 Y2 (`CLASS_NAMES`). Their
  bitmaps are those of ``sprites.py`` (`SHAPES`): L, J, N, N2, Y, Y2 in a
  4×2 box, P, Q 3×2, F, F2 3×3. J, N2, Q, F2, Y2 are the mirror images of L,
  N, P, F, Y; only rotations are applied, so a mirror pair stays two classes.
  (Versions of ``sprites.py`` before commit 708bd79 dropped each sprite's
  first row; bccc9905 has whole pentominoes.)
- **Rotation**, per object: 0, 90, 180 or 270 degrees clockwise, uniform
  (the code: ``sprite.rotate(ri(0, 3) * 90)``, where 90 is a transpose and a
  left-right flip). `rotation` counts quarter turns.
- **Scale**, per object: ×1 or ×2 with probability ½ each (the code:
  ``sprite.scale(ri(1, 2))``, each pixel becoming a 2×2 square); the largest
  sprite, 8×4 (or 4×8), fills at most half a block.
- **Position**: the sprite's top-left corner at its block's top-left corner
  (the script: ``center_objects=0``, which puts each "patch centre" at the
  block's corner; ``SpritePlacer`` draws the sprite from there).
- **Placement**: exactly 3 objects, each in a block drawn uniformly from the
  64 (``ri(0, 63)``, with replacement). Each sprite has a mask, its pixels
  grown by one pixel on every side, 8-neighbourhood included (the code:
  ``Sprite.margin(1)``); if two masks overlap — two objects in one block, or
  objects in neighbouring blocks that come too close — the whole scene is
  drawn again, classes and label included (``SpritePlacer``'s collision
  check: rejection sampling). So objects sit in distinct blocks and never
  touch. One detail of the code the protocol does not state, followed here:
  the margin is added *before* scaling (``TwoGroups.__init__`` calls
  ``margin(1)``, and ``Sprite.scale`` scales the mask with the patch), so a
  ×2 sprite's mask reaches 2 pixels beyond it; two objects are kept when
  their pixels are more than ``margin_a + margin_b`` pixels apart
  (Chebyshev), the margin being the object's scale. 9.7% of drawn scenes
  are redrawn (measured on 400,000; the protocol: about 10%; a one-pixel
  margin at both scales would redraw 7.1%).
- **Label**: a fair coin (the code's ``task=4``, ``task4_flag = ri(0, 1)``).
  1, "same": one class, uniform, for all three objects. 0, "different": one
  object of a class drawn uniformly and two of another class drawn
  uniformly from the other nine — exactly two share a class, never three
  distinct. Because a rejected scene draws its coin again the balance is
  fair up to the small difference in rejection rate between the two kinds;
  the authors measured 50.3% and 50.5% "same" in their files (protocol).
- **Hints**: per block, 0 for an empty block, otherwise the class of its
  sprite plus 1 (11 classes; the code stores the class or -1 for empty, and
  the experiments add 1). Rotation and scale do not change the hint.
- **Sizes**: training sets of 20,000, 40,000 or 80,000 images, a test set of
  20,000 (protocol; the authors' scripts differ on validation and test
  sizes). `STANDARD_TRAIN_SIZES`, `STANDARD_TEST_SIZE`.

Seeds. The authors drew scenes one after another from one
``numpy.random.RandomState(seed)``; this generator is vectorized and does
not reproduce their stream, only their distribution. Image ``i`` of a split
depends only on ``(seed, split, i)``: the images of a split come in chunks
of `CHUNK` (1,000); chunk ``k`` (images ``1000 k`` to ``1000 k + 999``) is
drawn by its own generator, seeded from ``(seed, split, k)``, as the first
1,000 accepted scenes of a stream of candidates. So ``generate(n,
start=s)`` returns images ``s`` to ``s + n - 1`` of the same sequence
whatever ``s`` and ``n`` are, a training set of 20,000 images is the first
half of the one of 40,000, and "train", "valid" and "test" never share a
draw.

Reference:
    Gulcehre, Bengio, "Knowledge Matters: Importance of Prior Information
    for Optimization", ICLR 2013, arXiv:1301.4083 (JMLR 17, 2016), section 3.
"""

import collections
import operator
import zlib

import numpy as np

from deepkit import datasets

CLASS_NAMES = ("L", "N", "P", "F", "Y", "J", "N2", "Q", "F2", "Y2")
# The bitmaps of caglar/Arcade-Universe sprites.py ("PENTL", ...), row by row.
SHAPES = {
    "L": ("x.", "x.", "x.", "xx"),
    "N": (".x", ".x", "xx", "x."),
    "P": ("xx", "xx", "x."),
    "F": (".xx", "xx.", ".x."),
    "Y": (".x", "xx", ".x", ".x"),
    "J": (".x", ".x", ".x", "xx"),
    "N2": ("x.", "x.", "xx", ".x"),
    "Q": ("xx", "xx", ".x"),
    "F2": ("xx.", ".xx", ".x."),
    "Y2": ("x.", "xx", "x.", "x."),
}
IMAGE_SIZE = 64
BLOCK_SIZE = 8
GRID = IMAGE_SIZE // BLOCK_SIZE  # blocks per row and per column
BLOCKS = GRID * GRID
OBJECTS = 3
CLASSES = len(CLASS_NAMES)
HINT_CLASSES = CLASSES + 1  # 0 = empty block
ROTATIONS = 4
SCALES = (1, 2)
STANDARD_TRAIN_SIZES = (20000, 40000, 80000)
STANDARD_TEST_SIZE = 20000
CHUNK = 1000

_SPLIT_KEYS = {"train": 1, "valid": 2, "test": 3}
_NAME_KEY = zlib.crc32(b"pentomino")
# Sprite variants: index = (class * ROTATIONS + rotation) * len(SCALES) + scale index.
_VARIANTS = CLASSES * ROTATIONS * len(SCALES)

Pentomino = collections.namedtuple("Pentomino", ["images", "labels", "hints"])
Pentomino.__doc__ = """Generated Pentomino images.

    images: uint8 `[N, 64, 64]`, 0 background, 1 object.
    labels: int32 `[N]`, 1 when the three objects have the same shape.
    hints: int32 `[N, 64]`, per block (row-major) 0 when empty, else the
        shape class of its sprite plus 1."""


class PentominoOptionError(datasets.DataError, ValueError):
    """An argument of the Pentomino generator or loader is out of range."""


def _integer(name, value, minimum, maximum=None):
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise PentominoOptionError(
            f"pentomino: {name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise PentominoOptionError(f"pentomino: {name} must be {allowed}, got {number}")
    return number


def _split_key(split):
    if split not in _SPLIT_KEYS:
        raise PentominoOptionError(
            f"pentomino: unknown split {split!r}; expected one of {tuple(_SPLIT_KEYS)}")
    return _SPLIT_KEYS[split]


def sprite(shape, rotation=0, scale=1):
    """The bitmap of one sprite: uint8 `[height, width]`, 1 on the object.

    Args:
        shape: a class number 0-9 or a name of `CLASS_NAMES`.
        rotation: quarter turns clockwise, 0-3.
        scale: 1 or 2 (each pixel becomes a ``scale × scale`` square).
    """
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise PentominoOptionError(
                f"pentomino: unknown shape {shape!r} (known: {', '.join(CLASS_NAMES)})")
        name = shape
    else:
        name = CLASS_NAMES[_integer("shape", shape, 0, CLASSES - 1)]
    rotation = _integer("rotation", rotation, 0, ROTATIONS - 1)
    if scale not in SCALES or isinstance(scale, bool):
        raise PentominoOptionError(f"pentomino: scale must be 1 or 2, got {scale!r}")
    bitmap = np.array([[c == "x" for c in row] for row in SHAPES[name]], dtype="uint8")
    bitmap = np.rot90(bitmap, -rotation)  # clockwise, as Sprite.rotate
    return np.kron(bitmap, np.ones((scale, scale), dtype="uint8"))


def _grow(mask, pixels):
    """`mask` grown by `pixels` on every side, diagonals included (Chebyshev)."""
    height, width = mask.shape
    padded = np.pad(mask, pixels)
    out = np.zeros_like(mask)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            out |= padded[dy:dy + height, dx:dx + width]
    return out


def _tables():
    """Bitmaps of every variant in its block, and which variants clash.

    Returns ``(bitmaps, clash)``: uint8 `[80, 8, 8]`, each sprite at the
    block's top-left corner; bool `[80, 80, 9]`, ``clash[a, b, o]`` when a
    sprite `a` and a sprite `b` in the block at offset ``o = (drow + 1) * 3
    + (dcol + 1)`` from it have overlapping masks (``o = 4``: the same block,
    always).
    """
    bitmaps = np.zeros((_VARIANTS, BLOCK_SIZE, BLOCK_SIZE), dtype="uint8")
    # Masks on a canvas of 3×3 blocks plus a 2-pixel border, the sprite in the middle block.
    side = 3 * BLOCK_SIZE + 4
    origin = BLOCK_SIZE + 2
    masks = np.zeros((_VARIANTS, side, side), dtype="uint8")
    for c in range(CLASSES):
        for r in range(ROTATIONS):
            for s, scale in enumerate(SCALES):
                v = (c * ROTATIONS + r) * len(SCALES) + s
                bitmap = sprite(c, r, scale)
                h, w = bitmap.shape
                bitmaps[v, :h, :w] = bitmap
                masks[v, origin:origin + h, origin:origin + w] = bitmap
                masks[v] = _grow(masks[v], scale)  # margin(1) before scale(scale)
    clash = np.zeros((_VARIANTS, _VARIANTS, 9), dtype=bool)
    flat = masks.reshape(_VARIANTS, -1).astype("float32")
    for drow in (-1, 0, 1):
        for dcol in (-1, 0, 1):
            moved = np.roll(masks, (drow * BLOCK_SIZE, dcol * BLOCK_SIZE), axis=(1, 2))
            overlap = flat @ moved.reshape(_VARIANTS, -1).astype("float32").T
            clash[:, :, (drow + 1) * 3 + dcol + 1] = overlap > 0
    return bitmaps, clash


_BITMAPS, _CLASH = _tables()
_PAIRS = ((0, 1), (0, 2), (1, 2))


def _draw(rng, n):
    """`n` candidate scenes: (labels, classes, variants, blocks, accepted)."""
    labels = rng.integers(0, 2, size=n)
    first = rng.integers(0, CLASSES, size=n)
    other = (first + 1 + rng.integers(0, CLASSES - 1, size=n)) % CLASSES
    pair = np.where(labels == 1, first, other)
    classes = np.stack([first, pair, pair], axis=1)
    rotations = rng.integers(0, ROTATIONS, size=(n, OBJECTS))
    scales = rng.integers(0, len(SCALES), size=(n, OBJECTS))
    blocks = rng.integers(0, BLOCKS, size=(n, OBJECTS))
    variants = (classes * ROTATIONS + rotations) * len(SCALES) + scales
    row, col = np.divmod(blocks, GRID)
    accepted = np.ones(n, dtype=bool)
    for i, j in _PAIRS:
        drow, dcol = row[:, j] - row[:, i], col[:, j] - col[:, i]
        near = (np.abs(drow) <= 1) & (np.abs(dcol) <= 1)
        offset = np.where(near, (drow + 1) * 3 + dcol + 1, 0)
        accepted &= ~(near & _CLASH[variants[:, i], variants[:, j], offset])
    return labels, classes, variants, blocks, accepted


def _chunk(seed, split_key, index):
    """The `CHUNK` scenes of chunk `index`: (labels, classes, variants, blocks)."""
    rng = np.random.default_rng(np.random.SeedSequence([_NAME_KEY, seed, split_key, index]))
    parts, have = [], 0
    while have < CHUNK:
        need = CHUNK - have
        *scene, accepted = _draw(rng, need + need // 4 + 16)
        keep = np.flatnonzero(accepted)[:need]
        parts.append([a[keep] for a in scene])
        have += len(keep)
    return [np.concatenate(arrays) for arrays in zip(*parts)]


def _render(images, hints, classes, variants, blocks):
    """Draw scenes into zeroed uint8 `images` `[n, 64, 64]` and int32 `hints` `[n, 64]`."""
    rows = np.arange(len(blocks))[:, None]
    # [image, block row, pixel row, block column, pixel column]: each sprite into its block.
    grid = images.reshape(len(blocks), GRID, BLOCK_SIZE, GRID, BLOCK_SIZE)
    block_row, block_col = np.divmod(blocks, GRID)
    grid[rows, block_row, :, block_col, :] = _BITMAPS[variants]
    hints[rows, blocks] = classes + 1


def generate(size, seed=0, split="train", start=0):
    """Images ``start`` to ``start + size - 1`` of a Pentomino split.

    Image ``i`` depends only on ``(seed, split, i)`` (see the module
    docstring), so any way of cutting a range into calls gives the same
    arrays.

    Args:
        size: the number of images.
        seed: a non-negative integer.
        split: "train", "valid" or "test": three disjoint draws.
        start: the index of the first image.

    Returns:
        A `Pentomino` tuple ``(images, labels, hints)``: uint8 `[size, 64,
        64]`, int32 `[size]`, int32 `[size, 64]`.

    Example:

    ```python
    from deepkit.datasets import pentomino
    images, labels, hints = pentomino.generate(40000, seed=1)
    ```
    """
    size = _integer("size", size, 0)
    seed = _integer("seed", seed, 0)
    start = _integer("start", start, 0)
    key = _split_key(split)
    images = np.zeros((size, IMAGE_SIZE, IMAGE_SIZE), dtype="uint8")
    labels = np.zeros(size, dtype="int32")
    hints = np.zeros((size, BLOCKS), dtype="int32")
    stop = start + size
    for index in range(start // CHUNK, -(-stop // CHUNK)):
        low, high = max(start, index * CHUNK), min(stop, (index + 1) * CHUNK)
        part = slice(low - index * CHUNK, high - index * CHUNK)
        chunk_labels, classes, variants, blocks = (a[part] for a in _chunk(seed, key, index))
        out = slice(low - start, high - start)
        _render(images[out], hints[out], classes, variants, blocks)
        labels[out] = chunk_labels
    return Pentomino(images, labels, hints)


def to_blocks(images):
    """Images `[N, 64, 64]` as blocks `[N, 64, 64]`: block ``b``'s 64 pixels, row-major.

    Block ``b`` is row ``b // 8``, column ``b % 8`` of the 8×8 grid, the
    order of the hints; this is the input of a network applied to every
    block with shared weights (the paper's P1NN).
    """
    images = np.asarray(images)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise PentominoOptionError(
            f"pentomino: to_blocks needs images [N, 64, 64], got shape {images.shape}")
    n = len(images)
    tiles = images.reshape(n, GRID, BLOCK_SIZE, GRID, BLOCK_SIZE).transpose(0, 1, 3, 2, 4)
    return tiles.reshape(n, BLOCKS, BLOCK_SIZE * BLOCK_SIZE)


LAYOUTS = ("image", "flat", "blocks")
TARGETS = ("label", "hints", "both")


@datasets.register("pentomino", description="Pentomino (Gulcehre & Bengio 2013): 64x64 "
                   "binary images of 3 pentominoes, same shape or not, with block hints; "
                   "generated")
def pentomino(split, *, train_size=40000, validation=0, test_size=STANDARD_TEST_SIZE, seed=0,
              layout="image", target="label", dtype="float32"):
    """One split of the Pentomino task, generated from `seed`.

    Args:
        split: "train" (`train_size` images), "valid" (`validation`
            images, a draw of its own; none when 0) or "test" (`test_size`
            images). Each is the start of one sequence of images per
            ``(seed, split)``: the 20,000-image training set is the first
            half of the 40,000-image one.
        train_size: training images (the paper: 20,000, 40,000 or 80,000).
        validation: validation images; 0 for no "valid" split.
        test_size: test images (20,000 in the protocol).
        seed: a non-negative integer.
        layout: "image" `[N, 64, 64, 1]`, "flat" `[N, 4096]`, or "blocks"
            `[N, 64, 64]`: the 64 pixels of each of the 64 blocks (see
            `to_blocks`), the order of the hints.
        target: "label" (int32 `[N]`, 1 when all three shapes are the same)
            or "hints" (int32 `[N, 64]`, per block 0 for empty, else the
            shape class + 1), or "both": ``{"hints": ..., "label": ...}``,
            the targets of `deepkit.models.StructuredMLP`'s two outputs, so
            that each training stage picks its own by its losses.
        dtype: of the images, "float32" (0.0 or 1.0) or "uint8".

    Returns:
        `(x, y)`, or None for "valid" without `validation`.
    """
    sizes = {"train": ("train_size", train_size, 1), "valid": ("validation", validation, 0),
             "test": ("test_size", test_size, 1)}
    if split not in sizes:
        raise PentominoOptionError(
            f"pentomino: unknown split {split!r}; expected one of {tuple(sizes)}")
    checked = {key: _integer(key, value, low) for key, value, low in sizes.values()}
    for option, value, allowed in (("layout", layout, LAYOUTS), ("target", target, TARGETS),
                                   ("dtype", dtype, ("float32", "uint8"))):
        if value not in allowed:
            raise PentominoOptionError(
                f"pentomino: {option} must be one of {', '.join(allowed)}; got {value!r}")
    size = checked[sizes[split][0]]
    if size == 0:
        return None
    images, labels, hints = generate(size, seed, split)
    if layout == "blocks":
        x = to_blocks(images)
    elif layout == "flat":
        x = images.reshape(size, -1)
    else:
        x = images[..., None]
    targets = {"label": labels, "hints": hints, "both": {"hints": hints, "label": labels}}
    return x.astype(dtype, copy=False), targets[target]
