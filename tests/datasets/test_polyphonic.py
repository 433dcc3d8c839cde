"""Tests for deepkit.datasets.polyphonic: split sizes of real files (the JSB
Chorales fixture in the default run; the full files under DEEPKIT_DATA,
with the published split sizes of all four sets, in the tests marked
`data`), piano rolls against the raw notes, masks, subsequences, and the
restricted unpickler refusing code."""

import os
import pickle
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from deepkit import datasets
from deepkit.datasets import polyphonic
from deepkit.testing import TestCase

FIXTURE_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"

# Pieces per split, as published (Boulanger-Lewandowski et al. 2012).
SPLIT_SIZES = {
    "jsb_chorales": (229, 76, 77),
    "nottingham": (694, 173, 170),
    "musedata": (524, 135, 124),
    "piano_midi": (87, 12, 25),
}


class PolyphonicFixtureFilesTest(TestCase):
    """The loaders on the JSB Chorales fixture; expectations from the file."""

    def data_folder(self):
        return FIXTURE_DATA

    def setUp(self):
        super().setUp()
        self.root = self.data_folder()
        patcher = mock.patch.dict(os.environ, {datasets.DATA_ENV: str(self.root)})
        patcher.start()
        self.addCleanup(patcher.stop)

    def raw(self, split):
        """The pieces of one JSB split, read with plain pickle (a trusted file
        of this repository or of the data folder), not with deepkit."""
        path = Path(self.root, polyphonic.FILES["jsb_chorales"])
        return pickle.loads(path.read_bytes())[split]

    def test_registered_with_options(self):
        for name in SPLIT_SIZES:
            self.assertIn(name, datasets.names())
            self.assertEqual(
                datasets.get(name).options,
                {"max_length": None, "train_max_length": None, "first_frame": False,
                 "limit": None},
            )

    def test_pieces_are_the_files_pieces(self):
        for split in ("train", "valid", "test"):
            raw = self.raw(split)
            self.assertGreater(len(raw), 1)
            self.assertEqual(polyphonic.load_pieces("jsb_chorales", split), raw)

    def test_jsb_arrays(self):
        for split in ("train", "valid", "test"):
            pieces = self.raw(split)
            size = len(pieces)
            x, y, weights = datasets.load("jsb_chorales", split)
            steps = max(len(p) for p in pieces) - 1
            self.assertEqual(x.shape, (size, steps, 88))
            self.assertEqual(y.shape, (size, steps, 88))
            self.assertEqual(weights.shape, (size, steps))
            self.assertEqual(x.dtype, np.float32)
            # One predicted frame per frame but the first of each piece.
            self.assertEqual(weights.sum(), sum(len(p) - 1 for p in pieces))
            self.assertAllEqual(weights.sum(1), [len(p) - 1 for p in pieces])
            # Padding is zero.
            self.assertEqual(np.abs(x[weights == 0]).sum(), 0.0)
            self.assertEqual(np.abs(y[weights == 0]).sum(), 0.0)

    def test_piano_roll_matches_the_notes(self):
        pieces = self.raw("test")
        x, y, weights = datasets.load("jsb_chorales", "test")
        for i in (0, len(pieces) // 2, len(pieces) - 1):
            piece = pieces[i]
            for t in range(len(piece) - 1):
                self.assertEqual(set(np.flatnonzero(x[i, t]) + 21), set(piece[t]))
                self.assertEqual(set(np.flatnonzero(y[i, t]) + 21), set(piece[t + 1]))
        # y is x shifted by one step on real frames.
        real = weights[:, 1:] > 0
        self.assertAllEqual(x[:, 1:][real], y[:, :-1][real])

    def test_max_length_cuts_pieces_into_subsequences(self):
        k = min(5, len(self.raw("valid")) - 1)
        pieces = self.raw("valid")[:k]
        x, y, weights = datasets.load("jsb_chorales", "valid", max_length=20, limit=k)
        expected_rows = sum(-(-(len(p) - 1) // 20) for p in pieces)
        self.assertEqual(x.shape, (expected_rows, 20, 88))
        self.assertEqual(weights.sum(), sum(len(p) - 1 for p in pieces))
        # The subsequences of the first piece, put back together, are the piece.
        rows = -(-(len(pieces[0]) - 1) // 20)
        joined = x[:rows].reshape(-1, 88)[: len(pieces[0]) - 1]
        self.assertAllEqual(joined, polyphonic.piano_roll(pieces[0])[:-1])

    def test_train_max_length_cuts_only_the_training_pieces(self):
        k = min(4, len(self.raw("train")) - 1)
        cut = datasets.load("jsb_chorales", "train", train_max_length=20, limit=k)
        self.assertAllEqual(cut[0], datasets.load("jsb_chorales", "train", max_length=20,
                                                  limit=k)[0])
        for split in ("valid", "test"):
            whole = datasets.load("jsb_chorales", split, train_max_length=20, limit=k)
            self.assertAllEqual(whole[0], datasets.load("jsb_chorales", split, limit=k)[0])
        with self.assertRaises(datasets.DataError):
            datasets.load("jsb_chorales", "train", train_max_length=0)

    def test_first_frame_predicts_every_frame(self):
        k = min(3, len(self.raw("test")) - 1)
        pieces = self.raw("test")[:k]
        x, y, weights = datasets.load("jsb_chorales", "test", first_frame=True, limit=k)
        self.assertEqual(weights.sum(), sum(len(p) for p in pieces))
        self.assertEqual(np.abs(x[:, 0]).sum(), 0.0)
        self.assertAllEqual(y[0, : len(pieces[0])], polyphonic.piano_roll(pieces[0]))

    def test_limit(self):
        k = min(8, len(self.raw("train")) - 1)
        x, y, weights = datasets.load("jsb_chorales", "train", limit=k)
        self.assertEqual(len(x), k)
        self.assertEqual(len(weights), k)

    def test_bad_options(self):
        with self.assertRaises(datasets.DataError):
            datasets.load("jsb_chorales", "train", max_length=0)
        with self.assertRaises(datasets.DataError):
            datasets.load("jsb_chorales", "train", limit=-1)
        with self.assertRaises(datasets.DataError):
            datasets.load("jsb_chorales", "train", max_lenght=10)


@pytest.mark.data
class PolyphonicFullDataTest(PolyphonicFixtureFilesTest):
    """The same checks on the full JSB file, and the published split sizes."""

    def data_folder(self):
        # tests/conftest.py sets DEEPKIT_DATA for tests marked `data`, or fails.
        return Path(os.environ[datasets.DATA_ENV])

    def test_split_sizes_of_all_four_sets(self):
        for name, sizes in SPLIT_SIZES.items():
            for split, size in zip(("train", "valid", "test"), sizes):
                self.assertLen(polyphonic.load_pieces(name, split), size, f"{name} {split}")


class _Boom:
    """Unpickling this would call os.system (if the unpickler allowed it)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class RestrictedUnpicklerTest(TestCase):
    def _write(self, obj, protocol=2):
        folder = self.get_temp_dir()
        path = Path(folder) / "data.pickle"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        return path

    def test_refuses_code(self):
        marker = Path(self.get_temp_dir()) / "pwned"
        for protocol in (0, 2, 4, 5):
            path = self._write({"train": [_Boom(marker)], "valid": [], "test": []}, protocol)
            with self.assertRaisesRegex(datasets.DataError, "refusing to load global"):
                polyphonic.read_pickle(path)
            self.assertFalse(marker.exists(), "the pickle ran code")
        # The same bytes do run code under plain pickle.loads: the test is real.
        pickle.loads(pickle.dumps(_Boom(marker)))
        self.assertTrue(marker.exists())

    def test_refuses_other_classes_and_wrong_layouts(self):
        cases = [
            {"train": [[[60]]], "valid": [[[60]]], "test": [[[np.int64(60)]]]},  # numpy
            {"train": [[[60]]], "valid": [[[60]]], "test": [[{60}]]},  # a set
            {"train": [[[60]]], "valid": [[[60]]], "test": [[(60,)]]},  # a tuple
            {"train": [[[60]]], "valid": [[[60]]]},  # no test split
            {"train": [[[60]]], "valid": [[[60]]], "test": [[[120]]]},  # not a piano key
            {"train": [[[60]]], "valid": [[[60]]], "test": [[[True]]]},  # a bool
            [[[60]]],
        ]
        for obj in cases:
            with self.assertRaises(datasets.DataError, msg=repr(obj)):
                polyphonic.read_pickle(self._write(obj))

    def test_reads_plain_data(self):
        obj = {"train": [[[60, 64], [], [21, 108]]], "valid": [[[60]]], "test": [[[60]]]}
        self.assertEqual(polyphonic.read_pickle(self._write(obj)), obj)

    def test_truncated_file(self):
        path = self._write({"train": [[[60]]], "valid": [[[60]]], "test": [[[60]]]})
        path.write_bytes(path.read_bytes()[:10])
        with self.assertRaises(datasets.DataError):
            polyphonic.read_pickle(path)

    def test_missing_data_dir(self):
        with mock.patch.dict(os.environ, {datasets.DATA_ENV: tempfile.gettempdir()}):
            with self.assertRaisesRegex(datasets.DataError, "lacks"):
                datasets.load("nottingham", "train")
        environ = {k: v for k, v in os.environ.items() if k != datasets.DATA_ENV}
        with mock.patch.dict(os.environ, environ, clear=True):
            with self.assertRaisesRegex(datasets.DataError, datasets.DATA_ENV):
                datasets.load("jsb_chorales", "train")
