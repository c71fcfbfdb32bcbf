"""The notebooks stay thin and documented, and each one is a DVC stage."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_has_a_header(path):
    cells = json.loads(path.read_text())["cells"]
    header = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and header.startswith("# ")
    for part in ("**Inputs**", "**Outputs**", "**Paper**"):
        assert part in header, f"{path.name}: header lacks {part}"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(code) <= 10, f"{path.name}: {len(code)} code cells"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and code[0] is tagged[0], f"{path.name}: the first code cell must be the parameters cell"
    for c in code:
        tree = ast.parse("".join(c["source"]))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        assert not defs, f"{path.name}: logic belongs in soar/, not in a notebook ({defs[0].name})"
    assert all(not c.get("outputs") for c in code), f"{path.name}: committed with outputs (executed copies: results/)"


def test_every_notebook_is_run_by_a_stage_or_a_make_target():
    """Pipeline notebooks are DVC stages; an exploration outside the default run (the world's
    design) is a make target that writes its executed copy to results/notebooks/."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cmds = " ".join(str(s["cmd"]) for s in stages.values())
    make = (ROOT / "Makefile").read_text()
    for path in NOTEBOOKS:
        run = f"notebooks/{path.name} results/notebooks/{path.name}"
        assert f"notebooks/{path.name}" in cmds or run in make, f"{path.name} is in neither dvc.yaml nor the Makefile"
