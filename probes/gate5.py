"""P8 (docs/world-design.md): gate 5, "intrinsic differs", read from the SOAR runs' dataset records.
OLS of each dataset's reward on its counts of each kind of pair (correct level 0-4, wrong; correct
level 0 the reference), over the datasets of the three runs of a variant; CIs from bootstrap
resamples of the datasets within each run. The intrinsic runs' learnability reward decides the
gate; the grounded runs' grounded reward stands beside it.
    python probes/gate5.py [ROOT [OUT]]   # ROOT: a checkout holding results/soar (default: .)
Writes OUT (default results/world-probes/gate5.json: P8's reading; gate5_intel.json is the same
reading of the runs re-made on another CPU, docs/world-design.md)."""
import json
import sys
from pathlib import Path

import numpy as np

from soar import addition

OUT = Path("results/world-probes/gate5.json")
KINDS = ["L0", "L1", "L2", "L3", "L4", "wrong"]  # L<k>: a correct pair of level k
USEFUL = "L2"  # gate 2's stepping stone
SEEDS, BOOT = (0, 1, 2), 2000


def kind(question: str, answer: str) -> str | None:
    r = addition.read(question, answer)
    if not r.well_posed:
        return None
    return f"L{r.level}" if r.correct else "wrong"


def datasets(root: Path, variant: str, field: str) -> list[tuple[int, np.ndarray, float]]:
    """(run seed, counts of each kind, reward) of every dataset a variant's runs proposed."""
    rows = []
    for seed in SEEDS:
        for f in sorted((root / f"results/soar/{variant}/seed{seed}/samples").glob("step_*.jsonl")):
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                kinds = [kind(q, a) for q, a in zip(rec["questions"], rec["answers"])]
                counts = np.array([kinds.count(k) for k in KINDS], dtype=float)
                rows.append((seed, counts, float(rec[field])))
    return rows


def fit(rows) -> np.ndarray:
    """Coefficients of KINDS[1:] (correct level 0 left out: the counts sum to the dataset size)."""
    x = np.array([c[1:] for _, c, _ in rows])
    x = np.column_stack([np.ones(len(rows)), x])
    y = np.array([r for _, _, r in rows])
    return np.linalg.lstsq(x, y, rcond=None)[0][1:]


def read(rows) -> dict:
    rng = np.random.default_rng(0)
    by_run = {s: [r for r in rows if r[0] == s] for s in SEEDS}
    point, boot = fit(rows), []
    for _ in range(BOOT):
        sample = [run[i] for run in by_run.values() for i in rng.integers(0, len(run), len(run))]
        boot.append(fit(sample))
    boot = np.array(boot)
    names, u = KINDS[1:], KINDS[1:].index(USEFUL)
    ci = lambda v: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))]  # noqa: E731
    out = {"datasets": len(rows), "reference": "L0",
           "mean_counts": dict(zip(KINDS, np.mean([c for _, c, _ in rows], axis=0).round(3).tolist())),
           "coef": {n: {"value": float(point[i]), "ci": ci(boot[:, i]),
                        "minus_useful": {"value": float(point[i] - point[u]), "ci": ci(boot[:, i] - boot[:, u])}}
                    for i, n in enumerate(names)}}
    best = max(["L0", *names], key=lambda n: 0.0 if n == "L0" else out["coef"][n]["value"])
    out["coef"]["L0"] = {"value": 0.0, "ci": [0.0, 0.0],
                         "minus_useful": {"value": float(-point[u]), "ci": ci(-boot[:, u])}}
    out["largest"] = best
    out["ranked_above_useful"] = [n for n, c in out["coef"].items() if n != USEFUL and c["minus_useful"]["ci"][0] > 0]
    return out


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else OUT
    intrinsic = read(datasets(root, "intrinsic", "reward"))
    grounded = read(datasets(root, "grounded", "grounded"))
    passed = intrinsic["largest"] != USEFUL and intrinsic["largest"] in intrinsic["ranked_above_useful"]
    result = {"useful": USEFUL, "gate5_passes": passed, "intrinsic": intrinsic, "grounded (beside)": grounded}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name, r in (("intrinsic", intrinsic), ("grounded", grounded)):
        print(f"{name}: {r['datasets']} datasets; mean counts {r['mean_counts']}; largest {r['largest']}; "
              f"above {USEFUL}: {r['ranked_above_useful']}")
        for n, c in r["coef"].items():
            print(f"  {n}: {c['value']:+.4f} ({c['ci'][0]:+.4f} to {c['ci'][1]:+.4f}); minus {USEFUL} "
                  f"{c['minus_useful']['value']:+.4f} ({c['minus_useful']['ci'][0]:+.4f} to "
                  f"{c['minus_useful']['ci'][1]:+.4f})")
    print("gate 5 passes" if passed else "gate 5 fails")


if __name__ == "__main__":
    main()
