"""Run records: JSONL metrics with namespaced keys, per-step sample dumps, final metrics.json.

Keys follow TRL's habit of `<scope>/<name>`: `teacher/reward_mean`, `student/accuracy`,
`time/inner_loops_s`, ... One line per outer step; appending is crash-safe (a torn last line
from a kill is dropped on resume, see `read_log`). Optional Weights & Biases mirror when
`WANDB_PROJECT` is set and wandb is installed; never required.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from soar.data import write_json, write_jsonl


class MetricsLog:
    """Append-only JSONL of metric dicts (one per step)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wandb = None
        if os.environ.get("WANDB_PROJECT"):
            try:
                import wandb  # optional

                self._wandb = wandb.init(project=os.environ["WANDB_PROJECT"], name=self.path.parent.name)
            except ImportError:
                pass

    def log(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))})

    def truncate(self, keep_steps: int) -> None:
        """Drop rows of steps >= keep_steps (a resumed run rewrites them identically)."""
        rows = [r for r in read_log(self.path) if r.get("step", 0) < keep_steps]
        write_jsonl(self.path, rows)


def resume_records(run_dir: str | Path, keep_steps: int) -> MetricsLog:
    """Open a run's records for appending from outer step `keep_steps`: metric rows and sample
    files of later steps (left by a killed run, or by a run of other params) are removed."""
    run_dir = Path(run_dir)
    log = MetricsLog(run_dir / "metrics.jsonl")
    log.truncate(keep_steps)
    for f in (run_dir / "samples").glob("step_*.jsonl"):
        if int(f.stem.removeprefix("step_")) >= keep_steps:
            f.unlink()
    return log


def samples_file(run_dir: str | Path, step: int) -> Path:
    """Every dataset of one outer step, with its questions, answers and reward."""
    return Path(run_dir) / "samples" / f"step_{step:06d}.jsonl"


def read_log(path: str | Path) -> list[dict]:
    """Rows of a MetricsLog; a torn final line (killed mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """The stage's summary metrics.json (atomic), as DVC `metrics:` reads it."""
    write_json(path, metrics)


def summarize_soar(rows: list[dict], grader_stats: dict) -> dict:
    """metrics.json of a SOAR run: final and best rewards, promotions, rejection rate, timing."""
    if not rows:
        return {"outer_steps": 0}
    rewards = [r["teacher/reward_mean"] for r in rows]
    return {
        "outer_steps": len(rows),
        "reward_mean_last": rewards[-1],
        "reward_mean_best": max(rewards),
        "reward_mean_all": sum(rewards) / len(rewards),
        "promotions": rows[-1]["promotions"],
        "promotion_steps": [r["step"] for r in rows if r["promotion"]],
        "rejection_rate_mean": sum(r["teacher/rejection_rate"] for r in rows) / len(rows),
        "baseline_score_first": rows[0]["student/baseline_score"],
        "baseline_score_last": rows[-1]["student/baseline_score"],
        "seconds_per_step": sum(r["wall_s"] for r in rows) / len(rows),  # wall clock (time/*: busy seconds)
        "grader": grader_stats,
    }
