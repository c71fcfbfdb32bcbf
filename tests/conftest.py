"""Shared fixtures: the real embedded model (converted once by `make setup`), loaded once per session."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, fp32 on CPU."""
    from soar.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def grader():
    from soar.grading import Grader

    with Grader(timeout=5.0, workers=2) as g:
        yield g


# --- whole outer steps of a toy SOAR run (test_teacher, test_parallel) ----------------------------

def toy_cfg(**soar):
    """Smoke sizes; tau below any reward so every step promotes (exercises promotion replay)."""
    from pathlib import Path

    from soar import config

    root = Path(__file__).resolve().parent.parent
    return config.load(root / "params.yaml", {"profile": "smoke", "soar": {"tau": -1.0, "window": 1, **soar}})


def build_run(cfg, checkpoint, grader, executor=None):
    """A SoarRun on 4 gsm8k problems with fresh teacher and student copies of the embedded model."""
    from soar import config
    from soar.data import load_benchmark
    from soar.models import load_model
    from soar.policy import Policy
    from soar.teacher import SoarRun

    d_train = load_benchmark("gsm8k_test", limit=4, seed=0)
    policies = [Policy(*load_model(cfg.model.name, device="cpu"), adapter=role.adapter, lora_r=role.lora_r,
                       lora_alpha=role.lora_alpha) for role in (cfg.teacher, cfg.student)]
    return SoarRun(*policies, d_train, cfg, grader=grader, checkpoint=checkpoint, fingerprint=config.fingerprint(cfg),
                   executor=executor)


def comparable(row):
    """A metric row without its timings."""
    return {k: v for k, v in row.items() if not k.startswith("time/") and k != "wall_s"}


def base_weights(policy):
    with policy.reference() as ref:
        return {k: v.clone() for k, v in ref.state_dict().items() if "lora_" not in k}


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, grader):
    """Two uninterrupted in-process outer steps of the toy run, computed once: what resumed runs and
    other executors must reproduce. `step0` is the checkpoint saved after step 0 (one promotion)."""
    import shutil
    from types import SimpleNamespace

    d = tmp_path_factory.mktemp("reference")
    run = build_run(toy_cfg(), d / "run.pt", grader)
    steps = [run.meta_step()]
    run.save()
    shutil.copy(d / "run.pt", d / "step0.pt")
    steps.append(run.meta_step())
    assert all(row["promotion"] for row, _ in steps) and run.state.promotions[0]["step"] == 0
    return SimpleNamespace(steps=steps, step0=d / "step0.pt", teacher=run.teacher.state(),
                           student=base_weights(run.student), pq=run.promotion_questions())
