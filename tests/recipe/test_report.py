"""What a run's report compares with: no paper delta for smoke runs or for a
data set or split the paper's numbers were not measured on; the per-data-set
numbers of `reference.per_dataset`; unverified numbers marked."""

import pytest

from deepkit.recipe import RecipeError, load, report

RECIPE = """\
name: music
data: {dataset: jsb_chorales, batch_size: 8}
model: {sequential: [{Dense: {units: 88}}]}
compile: {optimizer: SGD, loss: mse}
fit: {epochs: 2}
reference:
  source: "Pascanu et al. 2014, Table 2"
  test_frame_nll: 8.338
  unverified: [test_frame_nll]
  per_dataset:
    nottingham: {test_frame_nll: 3.22}
smoke: {fit.epochs: 1, data.limit: 8}
"""


def _load(tmp_path, text=RECIPE, **kwargs):
    path = tmp_path / "music.yaml"
    path.write_text(text)
    return load(path, check_names=False, **kwargs)


def _results(recipe, metrics):
    reference, note = report.comparable_reference(recipe)
    return {"name": recipe.name, "metrics": metrics, "reference": reference,
            "comparison": note, "smoke": recipe.smoke_run, "env": {}}


def test_full_run_compares_with_the_paper_and_marks_unverified_numbers(tmp_path):
    recipe = _load(tmp_path, overrides=["fit.epochs=5"])  # training changes keep it
    reference, note = report.comparable_reference(recipe)
    assert note is None and "per_dataset" not in reference
    rows = report.rows(reference, {"test_frame_nll": 8.300})
    assert rows[0] == ("test_frame_nll", "8.3", "8.338 (unverified)", "-0.038")
    text = report.markdown(_results(recipe, {"test_frame_nll": 8.300}))
    assert "| test_frame_nll | 8.3 | 8.338 (unverified) | -0.038 |" in text


def test_smoke_run_has_no_paper_delta(tmp_path):
    recipe = _load(tmp_path, smoke=True)
    results = _results(recipe, {"test_frame_nll": 12.5})
    assert results["reference"] == {} and "smoke run" in results["comparison"]
    text = report.markdown(results)
    assert text.startswith("# music (smoke run)")
    assert "8.338" not in text and "+" not in text.split("|---|")[1]
    assert "| test_frame_nll | 12.5 | — | — |" in text


def test_other_data_set_uses_its_own_paper_number(tmp_path):
    recipe = _load(tmp_path, overrides=["data.dataset=nottingham"])
    reference, note = report.comparable_reference(recipe)
    assert reference == {"source": "Pascanu et al. 2014, Table 2", "test_frame_nll": 3.22}
    assert "nottingham" in note
    assert report.rows(reference, {"test_frame_nll": 3.273})[0][2:] == ("3.22", "+0.053")


def test_data_set_without_a_paper_number_is_not_compared(tmp_path):
    recipe = _load(tmp_path, overrides=["data.dataset=musedata"])
    reference, note = report.comparable_reference(recipe)
    assert reference == {}
    assert "for jsb_chorales" in note and "musedata" in note


def test_changed_split_is_not_compared(tmp_path):
    recipe = _load(tmp_path, overrides=["data.limit=100"])
    reference, note = report.comparable_reference(recipe)
    assert reference == {} and "data.limit is 100" in note


@pytest.mark.parametrize("block, message, where", [
    ("{test_frame_nll: 8.3, unverified: [test_nll]}", "did you mean test_frame_nll",
     "reference.unverified[0]"),
    ("{test_frame_nll: 8.3, per_dataset: {nottingham: {test_frame_nll: high}}}",
     "expected a number", "reference.per_dataset.nottingham.test_frame_nll"),
])
def test_bad_reference_blocks_are_refused(tmp_path, block, message, where):
    text = RECIPE.split("reference:")[0] + f"reference: {block}\n"
    with pytest.raises(RecipeError) as info:
        _load(tmp_path, text)
    assert info.value.path == where and message in str(info.value)
