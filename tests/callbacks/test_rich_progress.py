"""RichProgressBar in a plain model.fit: epoch lines with metrics, time and
throughput, on a console that is not a terminal and on one that is."""

import io
import re

import keras
import numpy as np
from rich.console import Console

from deepkit.callbacks import RichProgressBar
from deepkit.callbacks.rich_progress import format_logs


def _data(n=100, features=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _console(terminal=False):
    return Console(file=io.StringIO(), force_terminal=terminal, width=200)


def _lines(console):
    """The non-blank lines written to `console` (rich ends a stopped display with one)."""
    return [line for line in console.file.getvalue().splitlines() if line.strip()]


LINE = re.compile(
    r"^epoch (\d+)/(\d+): accuracy (\S+) · loss (\S+) · val_accuracy (\S+) · val_loss (\S+) "
    r"\((\d+\.\d)s, ([\d,]+) ex/s\)$"
)


def test_one_line_per_epoch_with_metrics_time_and_throughput():
    x, y = _data()
    console = _console()
    bar = RichProgressBar(batch_size=20, console=console)
    history = _model().fit(x, y, batch_size=20, epochs=3, validation_data=_data(40, seed=1),
                           callbacks=[bar], verbose=0)
    lines = _lines(console)
    assert len(lines) == 3, lines
    for epoch, line in enumerate(lines):
        match = LINE.match(line)
        assert match, line
        assert match.group(1, 2) == (str(epoch + 1), "3")
        for i, key in zip((3, 4, 5, 6), ("accuracy", "loss", "val_accuracy", "val_loss")):
            assert match.group(i) == f"{history.history[key][epoch]:.4g}"
        assert int(match.group(8).replace(",", "")) > 0
    assert bar._progress is None  # the live display was stopped


def test_batches_per_second_without_batch_size_and_resumed_epochs():
    x, y = _data()
    console = _console()
    _model().fit(x, y, batch_size=25, epochs=3, initial_epoch=1, verbose=0,
                 callbacks=[RichProgressBar(console=console)])
    lines = _lines(console)
    assert [line.split(":")[0] for line in lines] == ["epoch 2/3", "epoch 3/3"]
    assert all(re.search(r"\(\d+\.\ds, [\d,]+\.\d batch/s\)$", line) for line in lines), lines


def test_terminal_shows_live_bars():
    x, y = _data(400)
    console = _console(terminal=True)
    _model().fit(x, y, batch_size=10, epochs=2, verbose=0,
                 callbacks=[RichProgressBar(batch_size=10, console=console, refresh_per_second=50)])
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())  # no ANSI codes
    # the transient bars were drawn (then erased): the epoch bar and the batch bar
    assert re.search(r"epochs .* \d/2", text)
    assert re.search(r"epoch [12] .* \d+/40 .* ex/s", text)
    assert "epoch 2/2: accuracy" in text


def _many_metrics_model(count=6):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, activation="softmax")])
    metrics = [keras.metrics.SparseCategoricalAccuracy(name=f"accuracy_{i}") for i in range(count)]
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=metrics)
    return model


def _check_unwrapped(text, history, epochs):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == epochs, lines
    for epoch, line in enumerate(lines):
        assert line.startswith(f"epoch {epoch + 1}/{epochs}: "), line
        assert re.search(r"\(\d+\.\ds, [\d,]+ ex/s\)$", line), line
        for key, values in history.history.items():
            assert f"{key} {values[epoch]:.4g}" in line, (key, line)
        assert len(line) > 200  # far past 80 columns, yet one line


def test_lines_are_not_wrapped_on_a_console_that_is_not_a_terminal():
    # A console on a file, at rich's default width for non-terminals (80).
    x, y = _data()
    console = Console(file=io.StringIO())
    assert not console.is_terminal and console.width == 80
    history = _many_metrics_model().fit(
        x, y, batch_size=20, epochs=2, validation_data=_data(40, seed=1), verbose=0,
        callbacks=[RichProgressBar(batch_size=20, console=console)])
    _check_unwrapped(console.file.getvalue(), history, 2)


def test_default_console_writes_whole_lines_to_stderr(capsys, monkeypatch):
    # The default console: stderr, which pytest replaces with a file.
    monkeypatch.delenv("COLUMNS", raising=False)
    x, y = _data()
    history = _many_metrics_model().fit(
        x, y, batch_size=20, epochs=2, validation_data=_data(40, seed=1), verbose=0,
        callbacks=[RichProgressBar(batch_size=20)])
    captured = capsys.readouterr()
    assert "epoch" not in captured.out
    _check_unwrapped(captured.err, history, 2)


def test_format_logs():
    logs = {"loss": np.float32(0.123456), "accuracy": 1, "lr": np.array(0.01), "name": "x"}
    assert format_logs(logs) == "loss 0.1235 · accuracy 1 · lr 0.01"
    assert format_logs(logs, keys=("loss",)) == "loss 0.1235"
    assert format_logs(None) == ""


def test_config_round_trip():
    bar = RichProgressBar(batch_size=32, refresh_per_second=2)
    config = bar.get_config()
    assert config == {"batch_size": 32, "refresh_per_second": 2}
    assert RichProgressBar(**config).get_config() == config
