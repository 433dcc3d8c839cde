"""Polyphonic music (Boulanger-Lewandowski et al. 2012) as 88-key piano rolls.

Four data sets, each a pickle under ``$DEEPKIT_DATA/polyphonic/``:
``{'train', 'valid', 'test'}`` → list of pieces → list of time steps → list
of MIDI note numbers (21 … 108). They are registered as `jsb_chorales`,
`nottingham`, `musedata` and `piano_midi`, with the same options.

The task is next-frame prediction: x holds frames 0 … T−2 of a piece, y
frames 1 … T−1, and `sample_weight` is 1 on real frames and 0 on padding, so
that a metric such as `deepkit.metrics.FrameNLL` averages over the real
frames of the split. Pieces are padded at the end, so a forward RNN needs no
mask: padding comes after every real frame of its piece. (`Masking(0.0)`
would also mask the rare real frames in which no note sounds.)

The pickles are read with a restricted unpickler that refuses every class
and function (`find_class`), so a malicious file cannot run code; the result
is then checked to be dicts, lists and ints of the documented layout.
"""

import io
import pickle

import numpy as np

from deepkit import datasets

KEYS = 88
LOWEST_NOTE = 21  # MIDI A0, key index 0; C8 = 108 is key index 87
FILES = {
    "jsb_chorales": "polyphonic/JSB Chorales.pickle",
    "nottingham": "polyphonic/Nottingham.pickle",
    "musedata": "polyphonic/MuseData.pickle",
    "piano_midi": "polyphonic/Piano-midi.de.pickle",
}
DESCRIPTIONS = {
    "jsb_chorales": "JSB Chorales piano rolls, 229/76/77 pieces (Boulanger-Lewandowski 2012)",
    "nottingham": "Nottingham folk tunes piano rolls, 694/173/170 pieces",
    "musedata": "MuseData piano rolls, 524/135/124 pieces",
    "piano_midi": "Piano-midi.de piano rolls, 87/12/25 pieces",
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only the basic types, never a class or function.

    Every global reference (the only way a pickle can reach code) is refused,
    as are persistent ids. Dicts, lists, tuples, strings and numbers built by
    the plain opcodes still load; `read_pickle` then checks the layout.
    """

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only dict, list, int, "
            "float and str are allowed in a data pickle"
        )

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id in a data pickle")


def restricted_loads(data):
    """Unpickle `data` (bytes) without admitting any class or function."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def read_pickle(path):
    """Read a polyphonic-music pickle safely; DataError when it is not one."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = restricted_loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise datasets.DataError(f"{path}: not a plain data pickle ({e})") from None
    _check_layout(obj, path)
    return obj


def _check_layout(obj, path):
    if not isinstance(obj, dict) or not {"train", "valid", "test"} <= set(obj):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise datasets.DataError(
            f"{path}: expected a dict with keys 'train', 'valid', 'test', found {found}"
        )
    for split in ("train", "valid", "test"):
        pieces = obj[split]
        if not isinstance(pieces, list):
            raise datasets.DataError(f"{path}: {split!r} is not a list of pieces")
        for i, piece in enumerate(pieces):
            if not isinstance(piece, list) or not piece:
                raise datasets.DataError(f"{path}: {split}[{i}] is not a non-empty list of frames")
            for t, frame in enumerate(piece):
                if not isinstance(frame, list):
                    raise datasets.DataError(f"{path}: {split}[{i}][{t}] is not a list of notes")
                for note in frame:
                    if type(note) is not int or not LOWEST_NOTE <= note < LOWEST_NOTE + KEYS:
                        raise datasets.DataError(
                            f"{path}: {split}[{i}][{t}] holds {note!r}, not a MIDI note "
                            f"number in {LOWEST_NOTE}..{LOWEST_NOTE + KEYS - 1}"
                        )


def piano_roll(piece):
    """A piece (list of frames of MIDI notes) as a (frames, 88) 0/1 float32 array."""
    roll = np.zeros((len(piece), KEYS), dtype="float32")
    for t, frame in enumerate(piece):
        roll[t, [n - LOWEST_NOTE for n in frame]] = 1.0
    return roll


def pad_pieces(pieces, max_length=None, first_frame=False):
    """Next-frame prediction arrays from a list of pieces.

    Args:
        pieces: lists of frames of MIDI notes.
        max_length: cut each piece's (x, y) pairs into consecutive
            subsequences of at most this many steps, each its own example
            (the state is not carried from one to the next); None keeps
            whole pieces.
        first_frame: also predict the first frame, from an all-zero input
            frame placed before it; otherwise frame 0 is only an input.

    Returns:
        `(x, y, sample_weight)`: float32 arrays `(n, steps, 88)`,
        `(n, steps, 88)` and `(n, steps)`, padded with zeros at the end.
    """
    pairs = []
    for piece in pieces:
        roll = piano_roll(piece)
        if first_frame:
            roll = np.concatenate([np.zeros((1, KEYS), "float32"), roll])
        x, y = roll[:-1], roll[1:]
        if len(x) == 0:
            continue
        step = max_length or len(x)
        pairs.extend((x[s : s + step], y[s : s + step]) for s in range(0, len(x), step))
    if not pairs:
        raise datasets.DataError("no piece is long enough to predict a frame")
    steps = max(len(x) for x, _ in pairs)
    xs = np.zeros((len(pairs), steps, KEYS), "float32")
    ys = np.zeros((len(pairs), steps, KEYS), "float32")
    weights = np.zeros((len(pairs), steps), "float32")
    for i, (x, y) in enumerate(pairs):
        xs[i, : len(x)] = x
        ys[i, : len(y)] = y
        weights[i, : len(x)] = 1.0
    return xs, ys, weights


def load_pieces(name, split):
    """The pieces of one split of data set `name`, as lists of MIDI notes."""
    root = datasets.data_dir()
    if root is None:
        raise datasets.DataError(
            f"data set {name!r} needs local files: set {datasets.DATA_ENV} to a folder "
            f"holding {FILES[name]} (the pickles of Boulanger-Lewandowski et al. 2012, "
            "http://www-etud.iro.umontreal.ca/~boulanni/icml2012)"
        )
    path = root / FILES[name]
    if not path.exists():
        raise datasets.DataError(f"data set {name!r}: {datasets.DATA_ENV}={root} lacks {path}")
    return read_pickle(path)[split]


def _make_loader(name):
    def loader(split, *, max_length=None, train_max_length=None, first_frame=False, limit=None):
        """One split of the piano rolls, for next-frame prediction.

        Args:
            split: "train", "valid" or "test".
            max_length: cut pieces into subsequences of at most this many
                steps (independent examples); None: whole pieces.
            train_max_length: the same for the training split only, so
                that a model trains on short subsequences (more updates per
                epoch) and is evaluated on whole pieces; it overrides
                `max_length` there.
            first_frame: also predict each piece's first frame (from an
                all-zero input frame).
            limit: keep only the first `limit` pieces (smoke runs).

        Returns:
            `(x, y, sample_weight)`: float32 piano rolls `(n, steps, 88)`
            (frames 0 … T−2 and 1 … T−1) and the mask of real frames
            `(n, steps)`.
        """
        for option, value in (("max_length", max_length), ("train_max_length", train_max_length)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise datasets.DataError(f"{option} must be a positive integer, got {value!r}")
        if split == "train" and train_max_length is not None:
            max_length = train_max_length
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise datasets.DataError(f"limit must be a positive integer, got {limit!r}")
        pieces = load_pieces(name, split)
        if limit is not None:
            pieces = pieces[:limit]
        return pad_pieces(pieces, max_length=max_length, first_frame=first_frame)

    loader.__name__ = loader.__qualname__ = name
    return loader


for _name, _file in FILES.items():
    globals()[_name] = datasets.register(
        _name, files=(_file,), description=DESCRIPTIONS[_name]
    )(_make_loader(_name))
del _name, _file
