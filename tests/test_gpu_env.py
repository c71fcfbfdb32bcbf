"""The GPU environment (requirements-gpu.txt: the project with vLLM) installs: its pins are the
project's but where vLLM requires otherwise, and pip resolves them (without installing; CI has
PyPI, and a regression of any pin shows here rather than on the first GPU machine)."""

import json
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "requirements-gpu.txt"
# what vLLM 0.31.0 requires otherwise: transformers>=5.10.4,<5.18.0, and numpy<2.4 through
# mistral-common (python <= 3.12)
OVERRIDES = {"transformers": "5.17.0", "numpy": "2.3.5"}


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip().lower()] = version.strip()
    return out


def test_gpu_pins_are_the_projects_but_where_vllm_requires_otherwise():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cpu = pins(project["dependencies"] + project["optional-dependencies"]["ray"])
    gpu = pins(GPU.read_text().splitlines())
    assert gpu.pop("vllm") == "0.31.0"
    assert set(gpu) == set(cpu)
    assert {name: v for name, v in gpu.items() if v != cpu[name]} == OVERRIDES


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=15).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_gpu_environment_resolves(tmp_path):
    if not _pypi_reachable():
        pytest.skip("PyPI is unreachable: the GPU environment cannot be resolved here")
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), "-r", str(GPU)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # public versions: a local wheel (torch 2.13.0+cpu where pip finds one) satisfies the pin too
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"].split("+")[0]
              for i in json.loads(report.read_text())["install"]}
    assert {k: chosen[k] for k in ("vllm", "torch", "transformers", "trl", "peft")} == {
        "vllm": "0.31.0", "torch": "2.13.0", "transformers": "5.17.0", "trl": "1.16.0", "peft": "0.21.2"}
