"""Every directory and file name of the pipeline, relative to the repository root.

Stages, notebooks and tests take names from here so that dvc.yaml, the notebooks and the
README agree. Nothing here creates directories; writers do (atomically, see soar.data).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_RAW = Path("data/raw")
DATA_PROCESSED = Path("data/processed")
MODELS = Path("models")  # converted weights (git-ignored, rebuilt by `make setup`)
CHECKPOINTS = Path("checkpoints")  # resumable run state (git-ignored)
RESULTS = Path("results")
FIGURES = RESULTS / "figures"
TABLES = RESULTS / "tables"
BENCHMARKS = RESULTS / "benchmarks"


def pool_file(pool: str) -> Path:
    """Problems of one pool selected by prepare_data (filters and limit applied)."""
    return DATA_PROCESSED / "pools" / f"{pool}.jsonl"


def hard_split(pool: str, split: str) -> Path:
    """fail@k survivors of one pool: split is 'train' (D_train, the reward set) or 'test'."""
    return DATA_PROCESSED / "hard" / f"{pool}_{split}.jsonl"


def stage_dir(stage: str, variant: str | None = None) -> Path:
    """results/<stage>[/<variant>]: metrics.json, metrics.jsonl, samples/."""
    return RESULTS / stage if variant is None else RESULTS / stage / variant


def soar_run(variant: str, seed: int) -> str:
    """Name of one SOAR run (one cell of the soar stage's variant x seed matrix)."""
    return f"{variant}/seed{seed}"


def sweep_run(tau: float, n: int) -> str:
    """Name of one cell of the sweep stage's tau x n grid (dvc.yaml spells it the same way)."""
    return f"tau{tau}-n{n}"


def retrain_run(pool: str, method: str, seed: int) -> str:
    """Name of one fresh student of the retrain stage (its results and checkpoints directory)."""
    return f"{pool}/{method}/seed{seed}"


def eval_samples(bench: str, model: str, seed: int) -> Path:
    """Per-problem outputs of one evaluated model (n, successes, every completion)."""
    return RESULTS / "eval" / "samples" / bench / model / f"seed{seed}.jsonl"


def run_checkpoint(stage: str, variant: str) -> Path:
    """Resumable state of one run (teacher, baseline student, optimizers, RNG, PQ)."""
    return CHECKPOINTS / stage / variant
