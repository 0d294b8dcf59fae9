"""The notebooks are executed by nbmake (``notebooks/`` is a test path); here: they are stored
without outputs and each has exactly one parameter cell that selects the model."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_circuit_shift.ipynb",
                                           "03_attention_views.ipynb", "04_icl_vs_gd.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_parametrised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), \
        f"{path.name} has outputs: strip them (jupyter nbconvert --clear-output --inplace)"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "INTERP_NOTEBOOK_MODEL" in params[0].source
    assert code[0] is params[0]
