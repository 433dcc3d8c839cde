"""The data fixtures in tests/fixtures/data: small, and (on the full data,
marked `data`) exactly what tests/fixtures/make_fixtures.py cuts from it."""

import gzip
import importlib.util
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DATA = FIXTURES / "data"


def _make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _content(path):
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def test_fixtures_are_the_files_the_script_writes_and_small():
    make = _make_fixtures()
    expected = sorted(
        [f"mnist/{name}" for name in make.MNIST]
        + [f"ptb/{pattern.format(s)}" for pattern, _, _ in make.PTB.values()
           for s in ("train", "valid", "test")]
        + [f"polyphonic/{name}" for name in make.MUSIC_FILES]
    )
    assert _files(DATA) == expected
    for name in expected:
        assert (DATA / name).stat().st_size < 40_000, name


def test_idx_fixture_headers_hold_the_cut_counts():
    make = _make_fixtures()
    for name, count in make.MNIST.items():
        data = _content(DATA / "mnist" / name)
        assert int.from_bytes(data[4:8], "big") == count, name


@pytest.mark.data
def test_fixtures_are_cut_from_the_full_data(full_data, tmp_path):
    written = _make_fixtures().make(full_data, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == _files(DATA)
    for name in _files(DATA):
        # gzip'd files compared uncompressed: another zlib may pack them differently
        assert _content(tmp_path / name) == _content(DATA / name), name
