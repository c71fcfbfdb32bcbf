"""The paper-path dry run (`make dry-run`): the paper profile's stages on a random scaled-down
Llama in bf16, from prepare_data to the main table, in a scratch project (about 2.5 minutes)."""

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
