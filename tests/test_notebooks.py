"""The user notebooks (``notebooks/*.ipynb``) run end to end at tiny sizes.

Each notebook's first code cell is tagged ``parameters`` (papermill style). The test inserts a
cell right after it that overrides the size knobs with tiny values and sends all outputs to a
temporary folder, executes the notebook with nbclient in a ``python3`` kernel from this
environment (``OMP_NUM_THREADS=1``, working directory = repository root), and checks that no
cell failed and that every expected figure (PNG) and table (CSV) was written and is not empty.

The notebooks use the shipped weights; without them the tests are skipped. For development
before the weights exist, point ``DEFTMED_TEST_PRIOR`` / ``DEFTMED_TEST_H`` at stand-in
checkpoints (any prior and an h-transform fine-tuned on it for ``ellipses64-sv20``).
"""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PRIOR = os.environ.get("DEFTMED_TEST_PRIOR", "prior-ellipses64")
H = os.environ.get("DEFTMED_TEST_H", "deft-ellipses64-sv20")
ANATOMY_PRIOR = os.environ.get("DEFTMED_TEST_ANATOMY_PRIOR", "prior-anatomy64")
ANATOMY_H = os.environ.get("DEFTMED_TEST_ANATOMY_H", "deft-anatomy64-sv20")

pytestmark = pytest.mark.slow

# notebook -> (parameter overrides, expected files in OUT_DIR)
CASES = {
    "01_quickstart.ipynb": (
        {"N_IMAGES": 2, "STEPS": 4, "SAMPLES": 2, "PRIOR": PRIOR, "H": H},
        ["sinogram.png", "reconstructions.png", "dicom_roundtrip.png", "metrics.csv",
         "sinograms.npy"]),
    "02_clinical_evaluation.ipynb": (
        {"N_IMAGES": 2, "STEPS": 4, "SAMPLES": 2, "TV_ITERATIONS": 20, "PRIOR": ANATOMY_PRIOR,
         "H": ANATOMY_H},
        ["cohort_soft_tissue.png", "windows.png", "difference_maps.png", "profiles.png",
         "uncertainty.png", "real_ct.png", "per_case_metrics.csv", "cohort_metrics.csv",
         "roi_stats.csv", "lesion_cnr.csv", "uncertainty_correlation.csv",
         "real_ct_metrics.csv"]),
    "03_new_scanner.ipynb": (
        {"FINETUNE_STEPS": 6, "FINETUNE_BATCH": 2, "N_IMAGES": 2, "STEPS": 4, "SAMPLES": 1,
         "PRIOR": PRIOR, "OTHER_H": H},
        ["my_scanner.yaml", "my_scanner_geometry.png", "finetune_loss.png",
         "scanner_reconstructions.png", "scanner_metrics.csv", "my_scanner_h.safetensors"]),
}


def _missing_weights(name: str) -> str | None:
    from deftmed.errors import CheckpointError
    from deftmed.shipped import resolve_checkpoint

    overrides = CASES[name][0]
    for weights in (overrides.get("PRIOR"), overrides.get("H"), overrides.get("OTHER_H")):
        try:
            if weights:
                resolve_checkpoint(weights)
        except CheckpointError as exc:
            return f"notebooks need the shipped weights: {exc}"
    return None


def _parameter_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def inject_parameters(nb, overrides: dict) -> None:
    """Insert a cell after the ``parameters`` cell that sets ``overrides`` (papermill style)."""
    index = next((i for i, c in enumerate(nb.cells)
                  if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
    assert index is not None, "notebook has no code cell tagged 'parameters'"
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert index == first_code, "the parameters cell must be the first code cell"
    unknown = set(overrides) - _parameter_names(nb.cells[index].source)
    assert not unknown, f"overrides {sorted(unknown)} are not parameters of the notebook"
    source = "# injected by tests/test_notebooks.py\n" + "\n".join(
        f"{k} = {v!r}" for k, v in overrides.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name}: commit notebooks with outputs stripped"


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs(name, tmp_path, monkeypatch):
    reason = _missing_weights(name)
    if reason:
        pytest.skip(reason)
    overrides, expected = CASES[name]
    out_dir = tmp_path / "out"
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    inject_parameters(nb, dict(overrides, OUT_DIR=str(out_dir)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the kernel inherits the environment
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    start = time.perf_counter()
    client.execute()
    print(f"{name}: executed in {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "error"]
    assert not errors, f"{name}: cells raised {[e.get('ename') for e in errors]}"
    for file in expected:
        path = out_dir / file
        assert path.is_file(), f"{name} did not write {file}"
        assert path.stat().st_size > 0, f"{name} wrote an empty {file}"
