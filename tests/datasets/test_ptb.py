"""Tests for deepkit.datasets.ptb: token counts, vocabularies and decoded
text of real PTB files (the fixture files in the default run, the full files
under DEEPKIT_DATA in the tests marked `data`, where Mikolov's counts are
checked too), the truncated-BPTT layout, limits and errors."""

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from deepkit import datasets
from deepkit.datasets import ptb
from deepkit.testing import TestCase

FIXTURE_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"


class PTBFixtureFilesTest(TestCase):
    """The loaders on the PTB fixtures; expectations computed from the files."""

    def data_folder(self):
        return FIXTURE_DATA

    def setUp(self):
        super().setUp()
        self.root = self.data_folder()
        patcher = mock.patch.dict(os.environ, {datasets.DATA_ENV: str(self.root)})
        patcher.start()
        self.addCleanup(patcher.stop)

    def lines(self, level, split):
        """The token lists of a file's non-empty lines, read without deepkit."""
        text = Path(self.root, ptb.FILES[level][split]).read_text(encoding="utf-8")
        return [line.split() for line in text.split("\n") if line.split()]

    def test_token_counts_and_vocabularies(self):
        for level in ("word", "char"):
            for split in datasets.SPLITS:
                lines = self.lines(level, split)
                self.assertGreater(len(lines), 0)
                symbols = sum(len(line) for line in lines)
                # one <eos> per line
                self.assertLen(ptb.token_ids(level, split), symbols + len(lines), f"{level} {split}")
                self.assertLen(ptb.token_ids(level, split, end_of_line=False), symbols)
            # <eos> first, then the training split's tokens in sorted order
            train = {token for line in self.lines(level, "train") for token in line}
            self.assertEqual(ptb.vocabulary(level), ["<eos>"] + sorted(train))
            self.assertEqual(ptb.vocabulary(level, end_of_line=False), sorted(train))
        self.assertIn("<unk>", ptb.vocabulary("word"))
        self.assertIn("_", ptb.vocabulary("char"))

    def test_streams_decode_to_the_text(self):
        for level, split in (("word", "test"), ("word", "valid"), ("char", "valid")):
            vocabulary = ptb.vocabulary(level)
            expected = [token for line in self.lines(level, split) for token in line + ["<eos>"]]
            decoded = [vocabulary[i] for i in ptb.token_ids(level, split)]
            self.assertEqual(decoded, expected, f"{level} {split}")
        vocabulary = ptb.vocabulary("char", end_of_line=False)
        ids = ptb.token_ids("char", "test", end_of_line=False)
        first = self.lines("char", "test")[0]
        self.assertEqual([vocabulary[i] for i in ids[: len(first)]], first)

    def test_loaded_windows_count_every_prediction_once(self):
        for level, split in (("word", "valid"), ("char", "test")):
            x, y, weights = datasets.load(f"ptb_{level}", split, batch_size=16, sequence_length=30)
            ids = ptb.token_ids(level, split)
            self.assertEqual(x.shape[1], 30)
            self.assertEqual(len(x) % 16, 0)
            self.assertEqual(x.dtype, np.int32)
            self.assertEqual(weights.sum(), len(ids) - 1)
            self.assertAllEqual(np.sort(y[weights > 0]), np.sort(ids[1:]))
            self.assertAllEqual(np.sort(x[weights > 0]), np.sort(ids[:-1]))

    def test_options_and_registry(self):
        self.assertEqual(
            datasets.get("ptb_word").options,
            {"batch_size": 32, "sequence_length": 35, "limit": None},
        )
        self.assertIn("end_of_line", datasets.get("ptb_char").options)
        x, _, _ = datasets.load("ptb_char", "train", batch_size=4, sequence_length=10, limit=9)
        self.assertEqual(x.shape, (12, 10))  # 9 windows rounded up to 3 batches of 4


@pytest.mark.data
class PTBFullDataTest(PTBFixtureFilesTest):
    """The same checks on the full files, and Mikolov's published counts."""

    def data_folder(self):
        # tests/conftest.py sets DEEPKIT_DATA for tests marked `data`, or fails.
        return Path(os.environ[datasets.DATA_ENV])

    def test_word_token_counts_and_vocabulary(self):
        # Mikolov's counts, with one <eos> per line.
        for split, count in (("train", 929_589), ("valid", 73_760), ("test", 82_430)):
            self.assertLen(ptb.token_ids("word", split), count)
        vocabulary = ptb.vocabulary("word")
        self.assertLen(vocabulary, 10_000)
        self.assertEqual(vocabulary[0], "<eos>")
        self.assertIn("<unk>", vocabulary)
        self.assertLen(set(vocabulary), 10_000)

    def test_char_vocabulary(self):
        vocabulary = ptb.vocabulary("char")
        self.assertLen(vocabulary, 50)  # 49 symbols, '_' among them, + <eos>
        self.assertIn("_", vocabulary)
        self.assertLen(ptb.vocabulary("char", end_of_line=False), 49)


class StreamLayoutTest(TestCase):
    def test_rows_continue_the_streams_of_the_previous_batch(self):
        ids = np.arange(1, 44, dtype="int32")  # 43 tokens, 42 predictions
        batch, steps = 4, 3
        x, y, weights = ptb.stream_windows(ids, batch, steps)
        # 42 predictions → streams of 11 → 4 windows of 3 (one padded step).
        self.assertEqual(x.shape, (16, 3))
        for b in range(batch):
            stream_x = np.concatenate([x[w * batch + b] for w in range(4)])
            stream_y = np.concatenate([y[w * batch + b] for w in range(4)])
            stream_w = np.concatenate([weights[w * batch + b] for w in range(4)])
            real = stream_w > 0
            start = b * 11
            count = min(11, 42 - start)
            self.assertAllEqual(stream_x[real], ids[start : start + count])
            self.assertAllEqual(stream_y[real], ids[start + 1 : start + 1 + count])
            # Real steps first, padding only at the end of the stream.
            self.assertAllEqual(real, np.arange(12) < count)
        # Batch w+1 starts where batch w ended, stream by stream.
        for w in range(3):
            for b in range(batch):
                if weights[(w + 1) * batch + b, 0] > 0:
                    self.assertEqual(x[(w + 1) * batch + b, 0], y[w * batch + b, -1])
        self.assertEqual(weights.sum(), 42)

    def test_bad_arguments(self):
        with self.assertRaises(datasets.DataError):
            ptb.stream_windows(np.arange(10), 0, 5)
        with self.assertRaises(datasets.DataError):
            ptb.stream_windows(np.arange(10), 2, 0)
        with self.assertRaises(datasets.DataError):
            ptb.stream_windows(np.arange(1), 2, 5)

    def test_small_files_and_unknown_tokens(self):
        root = Path(self.get_temp_dir())
        (root / "ptb").mkdir()
        (root / "ptb" / "ptb.train.txt").write_text(" a b c \n b a \n")
        (root / "ptb" / "ptb.valid.txt").write_text(" a c \n")
        (root / "ptb" / "ptb.test.txt").write_text(" a d \n")
        with mock.patch.dict(os.environ, {datasets.DATA_ENV: str(root)}):
            self.assertEqual(ptb.vocabulary("word"), ["<eos>", "a", "b", "c"])
            x, y, weights = datasets.load("ptb_word", "train", batch_size=1, sequence_length=4)
            # a b c <eos> b a <eos>: 6 predictions in 2 windows of 4.
            self.assertAllEqual(x, [[1, 2, 3, 0], [2, 1, 0, 0]])
            self.assertAllEqual(y, [[2, 3, 0, 2], [1, 0, 0, 0]])
            self.assertAllEqual(weights, [[1, 1, 1, 1], [1, 1, 0, 0]])
            with self.assertRaisesRegex(datasets.DataError, "'d'"):
                datasets.load("ptb_word", "test")
            with self.assertRaisesRegex(datasets.DataError, "lacks"):
                datasets.load("ptb_char", "train")
