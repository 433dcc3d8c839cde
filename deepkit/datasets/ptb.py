"""Penn Treebank language modelling, word and character level (Mikolov's files).

`ptb_word` reads ``$DEEPKIT_DATA/ptb/ptb.{train,valid,test}.txt``: words
separated by spaces, one sentence per line; every line ends with an
end-of-sentence token ``<eos>``, as in Mikolov's setup (929,589 / 73,760 /
82,430 tokens; 10,000 word types including ``<unk>`` and ``<eos>``).
`ptb_char` reads ``ptb.char.*.txt``: characters separated by spaces, ``_``
between words; each line also ends with ``<eos>`` unless
`end_of_line=False` (50 symbols with it, 49 without).

The vocabulary is that of the training split: ``<eos>`` first, then the
other tokens in sorted order; valid and test use the same ids.

The token stream of a split is laid out for truncated backpropagation through
time: the inputs (all tokens but the last) and targets (all but the first)
are cut into `batch_size` equal streams, and each stream into windows of
`sequence_length` tokens. Row ``w * batch_size + b`` holds window `w` of
stream `b`, so with `shuffle=False` the rows of batch w+1 continue those of
batch w, and a `stateful=True` RNN carries each stream's state from one batch
to the next. The last window of each stream is padded; `sample_weight` is 0
on padding, so that `Perplexity` and `BitsPerCharacter` count every token of
the split exactly once.
"""

import math

import numpy as np

from deepkit import datasets

EOS = "<eos>"
FILES = {
    "word": {s: f"ptb/ptb.{s}.txt" for s in datasets.SPLITS},
    "char": {s: f"ptb/ptb.char.{s}.txt" for s in datasets.SPLITS},
}
_CACHE = {}


def read_tokens(path, end_of_line=True):
    """The tokens of a PTB file, with `<eos>` at the end of each line."""
    tokens = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            tokens.extend(words)
            if end_of_line:
                tokens.append(EOS)
    return tokens


def _path(level, split):
    root = datasets.data_dir()
    if root is None:
        raise datasets.DataError(
            f"data set 'ptb_{level}' needs local files: set {datasets.DATA_ENV} to a folder "
            f"holding {', '.join(FILES[level].values())} (Mikolov's Penn Treebank "
            "files, e.g. from http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz)"
        )
    path = root / FILES[level][split]
    if not path.exists():
        raise datasets.DataError(
            f"data set 'ptb_{level}': {datasets.DATA_ENV}={root} lacks {path}"
        )
    return path


def _tokens(level, split, end_of_line):
    path = _path(level, split)
    key = (str(path), path.stat().st_mtime_ns, end_of_line)
    if key not in _CACHE:
        _CACHE[key] = read_tokens(path, end_of_line)
    return _CACHE[key]


def vocabulary(level="word", end_of_line=True):
    """The token list of `level` ("word" or "char"): id → token."""
    tokens = set(_tokens(level, "train", end_of_line))
    tokens.discard(EOS)
    return ([EOS] if end_of_line else []) + sorted(tokens)


def token_ids(level, split, end_of_line=True):
    """The split's token stream as int32 ids of `vocabulary(level)`."""
    index = {t: i for i, t in enumerate(vocabulary(level, end_of_line))}
    tokens = _tokens(level, split, end_of_line)
    try:
        return np.fromiter((index[t] for t in tokens), dtype="int32", count=len(tokens))
    except KeyError as e:
        raise datasets.DataError(
            f"ptb_{level} {split}: token {e.args[0]!r} is not in the training vocabulary"
        ) from None


def stream_windows(ids, batch_size, sequence_length):
    """Lay out a token stream for truncated BPTT (see the module docstring).

    Returns:
        `(x, y, sample_weight)`: int32 `(windows * batch_size, sequence_length)`
        inputs and targets, float32 weights (0 on padding).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise datasets.DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(sequence_length, int) or sequence_length < 1:
        raise datasets.DataError(
            f"sequence_length must be a positive integer, got {sequence_length!r}"
        )
    predictions = len(ids) - 1
    if predictions < 1:
        raise datasets.DataError("a token stream needs at least two tokens")
    stream_length = math.ceil(predictions / batch_size)
    windows = math.ceil(stream_length / sequence_length)

    # Stream b holds predictions b*L … (b+1)*L − 1 (L = stream_length), then
    # zeros up to a whole number of windows.
    def streams_of(values, dtype):
        flat = np.zeros(batch_size * stream_length, dtype)
        flat[:predictions] = values
        streams = np.zeros((batch_size, windows * sequence_length), dtype)
        streams[:, :stream_length] = flat.reshape(batch_size, stream_length)
        by_window = streams.reshape(batch_size, windows, sequence_length)
        # Row w * batch_size + b: window w of stream b.
        return by_window.transpose(1, 0, 2).reshape(windows * batch_size, sequence_length)

    x = streams_of(ids[:-1], "int32")
    y = streams_of(ids[1:], "int32")
    weights = streams_of(np.ones(predictions, "float32"), "float32")
    return x, y, weights


def _load(level, split, batch_size, sequence_length, end_of_line, limit):
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise datasets.DataError(f"limit must be a positive integer, got {limit!r}")
    x, y, w = stream_windows(token_ids(level, split, end_of_line), batch_size, sequence_length)
    if limit is not None:
        rows = math.ceil(limit / batch_size) * batch_size
        x, y, w = x[:rows], y[:rows], w[:rows]
    return x, y, w


def _files(level):
    return lambda **options: list(FILES[level].values())


@datasets.register(
    "ptb_word",
    files=_files("word"),
    description="Penn Treebank words, 929k/74k/82k tokens, 10k vocabulary (Mikolov)",
)
def ptb_word(split, *, batch_size=32, sequence_length=35, limit=None):
    """One split of word-level PTB, in windows for truncated BPTT.

    Args:
        split: "train", "valid" or "test".
        batch_size: number of parallel streams (use the same batch size in
            `fit`/`evaluate`, with `shuffle=False` for a stateful RNN).
        sequence_length: time steps per window.
        limit: keep only the first `limit` windows, rounded up to whole
            batches (smoke runs).

    Returns:
        `(x, y, sample_weight)`: int32 word ids `(n, sequence_length)`, the
        next word's ids, and 1.0 on real positions, 0.0 on padding.
    """
    return _load("word", split, batch_size, sequence_length, True, limit)


@datasets.register(
    "ptb_char",
    files=_files("char"),
    description="Penn Treebank characters, 5.0M/0.39M/0.44M symbols, 50 symbols (Mikolov)",
)
def ptb_char(split, *, batch_size=32, sequence_length=100, end_of_line=True, limit=None):
    """One split of character-level PTB, in windows for truncated BPTT.

    Args:
        split: "train", "valid" or "test".
        batch_size: number of parallel streams.
        sequence_length: time steps per window.
        end_of_line: end each line with an `<eos>` symbol.
        limit: keep only the first `limit` windows, rounded up to whole
            batches (smoke runs).

    Returns:
        `(x, y, sample_weight)` as for `ptb_word`, with character ids.
    """
    return _load("char", split, batch_size, sequence_length, end_of_line, limit)
