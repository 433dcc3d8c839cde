"""Test-session setup shared by every test folder."""

import os
from pathlib import Path


def pytest_configure(config):
    # The real data sets: $DEEPKIT_DATA, else ../shared/data beside the
    # checkout (where CI keeps them). Tests that need other folders patch it.
    if not os.environ.get("DEEPKIT_DATA"):
        shared = Path(__file__).resolve().parents[2] / "shared" / "data"
        if shared.is_dir():
            os.environ["DEEPKIT_DATA"] = str(shared)
