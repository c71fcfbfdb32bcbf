"""The paper-path dry run (`make dry-run`): the paper profile's stages on a random scaled-down
Llama in bf16, from prepare_data to the main table, in a scratch project (about 2.5 minutes);
and the one-GPU profile's (`--profile gpu1`: LoRA students batched on one base)."""

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def test_the_paper_path_runs_end_to_end(tmp_path):
    from soar import dry_run

    cfg = dry_run.resolved_config()  # the paper's knobs (dry_run.check_paper_path), toy sizes
    assert (cfg.student.adapter, cfg.teacher.adapter, cfg.soar.reward_metric) == ("full", "full", "accuracy")
    assert cfg.model.dtype == "bfloat16" and cfg.fail_at_k.pools == ("math_test", "olympiadbench")
    res = subprocess.run([sys.executable, "-m", "soar.dry_run", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=1200)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"

    for variant in dry_run.SOAR_RUNS:  # one outer step each, promoting a full student into the bf16 base
        rows = [json.loads(x) for x in (tmp_path / f"results/soar/{variant}/seed0/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0] and rows[0]["promotion"] == (variant != "no_promotion")
    state = torch.load(tmp_path / "checkpoints/soar/grounded/seed0/state.pt", weights_only=False)
    weights = state.promotions[0]["state"]
    assert "model.embed_tokens.weight" in weights and len(weights) == 20  # every weight of the 2-layer Llama
    assert {v.dtype for v in weights.values()} | {v.dtype for v in state.teacher_state.values()} == {torch.float32}

    runs = json.loads((tmp_path / "results/retrain/metrics.json").read_text())["runs"]
    assert {(r["pool"], r["method"]) for r in runs} == {(p, m) for p in cfg.fail_at_k.pools for m in cfg.retrain.methods}
    ckpt = torch.load(tmp_path / "checkpoints/retrain/olympiadbench/oracle/seed0/step_000002.pt")
    assert ckpt.keys() == weights.keys() and {v.dtype for v in ckpt.values()} == {torch.bfloat16}  # as computed

    metrics = json.loads((tmp_path / "results/eval/metrics.json").read_text())
    assert set(metrics["benchmarks"]) == {"math_test", "olympiadbench", "aime24", "amc23"}
    assert set(metrics["benchmarks"]["aime24"]) == {"base", "ps", *cfg.retrain.methods}
    main = (tmp_path / "results/tables/main.md").read_text()
    assert "| SOAR-PS |" in main and "| Oracle |" in main


def test_the_gpu1_path_runs_end_to_end(tmp_path):
    from soar import dry_run

    cfg = dry_run.resolved_config("gpu1")  # the gpu1 profile's knobs, the same toy sizes
    assert (cfg.student.adapter, cfg.teacher.adapter, cfg.generation.backend) == ("lora", "full", "hf")
    # the inner loops' students of an outer step, all batched on one base (soar.teacher.inner_loops)
    students = cfg.soar.group_size * cfg.soar.groups_per_step * cfg.soar.r
    assert cfg.parallel.backend == "inprocess" and 1 < students <= cfg.parallel.batch_students
    res = subprocess.run([sys.executable, "-m", "soar.dry_run", "--profile", "gpu1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"

    for variant in dry_run.SOAR_RUNS:
        metrics = (tmp_path / f"results/soar/{variant}/seed0/metrics.jsonl").read_text()
        rows = [json.loads(x) for x in metrics.splitlines()]
        assert [r["step"] for r in rows] == [0] and rows[0]["promotion"] == (variant != "no_promotion")
    state = torch.load(tmp_path / "checkpoints/soar/grounded/seed0/state.pt", weights_only=False)
    adapter = state.promotions[0]["state"]  # the promoted student: a LoRA adapter, its fp32 masters
    assert adapter and all("lora_" in k for k in adapter) and {v.dtype for v in adapter.values()} == {torch.float32}
    assert {v.dtype for v in state.teacher_state.values()} == {torch.float32}  # the full-FT teacher's masters

    runs = json.loads((tmp_path / "results/retrain/metrics.json").read_text())["runs"]
    assert {(r["pool"], r["method"]) for r in runs} == {("math_test", m) for m in cfg.retrain.methods}
    metrics = json.loads((tmp_path / "results/eval/metrics.json").read_text())
    assert set(metrics["benchmarks"]) == {"math_test", "aime24", "amc23"}
    assert set(metrics["benchmarks"]["math_test"]) == {"base", "ps", *cfg.retrain.methods}
    assert "| SOAR-PS |" in (tmp_path / "results/tables/main.md").read_text()
