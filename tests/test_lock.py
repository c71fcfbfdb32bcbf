"""The committed results are those of the committed code: every stage in dvc.lock ran on the code,
notebooks and params that are in this tree (what `dvc status` reports as changed deps and params),
and every stage of dvc.yaml has run. A change that alters a stage's inputs fails here until the
stage is re-run and its outputs committed. Directory deps are outputs of other stages (checked
through those stages) or data/raw (checked by its sha256 list in prepare_data)."""

import hashlib
import itertools
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MISSING = object()


def _norm(x):
    """DVC writes the lock with YAML 1.2 floats (`1e-05`), which PyYAML (YAML 1.1) reads as strings."""
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x
    return x


def _stages() -> set[str]:
    """Every stage of dvc.yaml, matrices expanded as DVC names them (from params.yaml)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    matrices = {"soar": (params["runs"]["variants"], params["runs"]["seeds"]),
                "sweep": (params["sweep"]["taus"], params["sweep"]["ns"])}
    names = {name for name in stages if "matrix" not in stages[name]}
    for name, axes in matrices.items():
        assert "matrix" in stages[name]
        names |= {f"{name}@{a}-{b}" for a, b in itertools.product(*axes)}
    return names


def _get(data, dotted: str):
    """params.yaml value at a DVC params key: a top-level name, or a dotted path into sections."""
    if dotted in data:
        return data[dotted]
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def test_every_locked_stage_ran_on_the_code_and_params_of_this_tree():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert set(lock) <= _stages(), f"dvc.lock holds stages dvc.yaml no longer has: {sorted(set(lock) - _stages())}"
    stale = []
    for name, stage in lock.items():
        for dep in stage.get("deps", []):
            path = ROOT / dep["path"]
            if "nfiles" in dep or path.is_dir() or not (path.suffix in (".py", ".ipynb", ".yaml", ".json")):
                continue
            if not path.exists() or hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']} changed")
        for file, params in stage.get("params", {}).items():
            data = yaml.safe_load((ROOT / file).read_text())
            stale += [f"{name}: {file}:{key} changed" for key, value in params.items()
                      if _norm(_get(data, key)) != _norm(value)]
    assert not stale, "stages whose inputs changed since they ran (`dvc repro`, then commit):\n" + "\n".join(stale)


def test_every_stage_of_the_pipeline_has_run():
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert _stages() <= locked, f"never run: {sorted(_stages() - locked)}"
