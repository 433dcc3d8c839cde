"""Test-session setup shared by every test folder.

Data: the default run reads only the small real fixtures in
tests/fixtures/data (see tests/fixtures/README.md), never the DEEPKIT_DATA of
the environment, which every test that is not marked `data` runs without.
Tests marked `data` check the full data sets; setup.cfg deselects them by
default, `python -m pytest -m data` runs them, and they read the folder named
by DEEPKIT_DATA, failing with a message when it is not set.
"""

import os
from pathlib import Path

import pytest

DATA_ENV = "DEEPKIT_DATA"
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"
# Read once, before any test patches the environment; only `data` tests use it.
_FULL_DATA = os.environ.get(DATA_ENV)


def full_data_dir():
    """The full data folder of the environment, or a failure saying what to set."""
    if not _FULL_DATA:
        pytest.fail(
            f"this test is marked `data` and needs the full data sets: set {DATA_ENV} "
            "to a folder holding mnist/, ptb/ and polyphonic/ (see "
            "deepkit/datasets/__init__.py), e.g. "
            f"{DATA_ENV}=/path/to/data python -m pytest -m data",
            pytrace=False,
        )
    folder = Path(_FULL_DATA).expanduser()
    if not folder.is_dir():
        pytest.fail(f"{DATA_ENV}={_FULL_DATA} is not a folder", pytrace=False)
    return folder


@pytest.fixture(autouse=True)
def _data_environment(request, monkeypatch):
    """DEEPKIT_DATA: unset for default tests; the full folder for `data` tests."""
    if request.node.get_closest_marker("data") is None:
        monkeypatch.delenv(DATA_ENV, raising=False)
    else:
        monkeypatch.setenv(DATA_ENV, str(full_data_dir()))


@pytest.fixture
def fixture_data(monkeypatch):
    """DEEPKIT_DATA pointed at the small real fixtures; returns that folder."""
    monkeypatch.setenv(DATA_ENV, str(FIXTURE_DATA))
    return FIXTURE_DATA


@pytest.fixture
def full_data():
    """The full data folder (for tests marked `data`; DEEPKIT_DATA is set to it)."""
    return full_data_dir()


@pytest.fixture(params=["fixtures", pytest.param("full", marks=pytest.mark.data)])
def any_data(request, monkeypatch):
    """Each data folder in turn: the fixtures (default run) and the full data
    (marked `data`); DEEPKIT_DATA is set to it. Tests that use this run the
    same assertions, computed from the files, on both."""
    folder = FIXTURE_DATA if request.param == "fixtures" else full_data_dir()
    monkeypatch.setenv(DATA_ENV, str(folder))
    return folder
