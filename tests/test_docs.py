"""The Python examples of docs/*.md run as they are written."""

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _examples():
    for path in sorted(DOCS.glob("*.md")):
        for i, code in enumerate(_BLOCK.findall(path.read_text())):
            yield pytest.param(code, id=f"{path.name}[{i}]")


@pytest.mark.parametrize("code", list(_examples()))
def test_the_example_runs(code, tmp_path, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples write run folders where they run
    try:
        exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs__"})
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().out.strip(), "an example prints what it shows"


def test_the_training_page_has_its_examples():
    assert len(list(_examples())) >= 2
