"""The world a run is set in, one object behind one interface: where its problems come from and
how a student's answer is checked. `of(cfg)` gives the world of a config (its fail@k pools); the
stages ask it and hold no world-specific branch:
- `pool(name, levels=, limit=, seed=)`: the problems fail@k draws the hard sets from;
- `oracle_pool(pool)`: the official training problems behind a hard pool (the Oracle's questions);
- `grader(grading)`: the answer check behind every student verdict (inner loops, Q_R, fail@k,
  pass@k), with soar.grading.Grader's interface;
- the question analysis's own tools where the world has them: `exact_judge()` (analysis.judge:
  exact), `embedder(name)` (a kernel of the world's own, else None: sentence embeddings) and
  `topics` (the exact drift categories, or None: nearest MATH subjects).
`Math` is the paper's: benchmark files (soar.data) checked by math-verify in bounded worker
processes. `Addition` is the laptop world (soar.addition): generated pools, the sum checked
exactly and in-process (no worker pool to wait on in the inner loop).
"""

from __future__ import annotations

from soar import addition, data, grading


class Math:
    name = "math"
    # The official training set behind each hard pool, for the Oracle (PAPER.md: full MATH train).
    ORACLE_TRAIN = {"math_test": "math_train", "math500": "math_train", "gsm8k_test": "gsm8k_train",
                    "olympiadbench": "math_train"}

    def pool(self, name: str, *, levels=None, limit: int | None = None, seed: int = 0) -> list[data.Problem]:
        return data.load_pool(name, levels=levels, limit=limit, seed=seed)

    def oracle_pool(self, pool: str) -> list[data.Problem] | None:
        """None where a pool has no official training set (HARP)."""
        return data.load_pool(self.ORACLE_TRAIN[pool]) if pool in self.ORACLE_TRAIN else None

    def grader(self, grading_cfg) -> grading.Grader:
        return grading.Grader(timeout=grading_cfg.timeout_s, workers=grading_cfg.workers)

    topics = None

    def exact_judge(self):
        raise ValueError("analysis.judge: exact needs a world whose verdicts can be computed (the addition world); "
                         "judge math questions with `local` or `openai`")

    def embedder(self, name: str):
        return None


class Addition:
    name = "addition"

    def pool(self, name: str, *, levels=None, limit: int | None = None, seed: int = 0) -> list[data.Problem]:
        """A generated pool (soar.addition.POOLS); `levels` are numbers of carries."""
        return data.limit_problems(data.filter_problems(addition.pool(name, seed=seed), levels=levels), limit, seed)

    def oracle_pool(self, pool: str) -> list[data.Problem]:
        return addition.pool("addition_train")  # leaves out every problem of addition_test

    def grader(self, grading_cfg) -> addition.ExactGrader:
        return addition.ExactGrader()

    topics = addition.TOPICS

    def exact_judge(self) -> addition.ExactJudge:
        return addition.ExactJudge()

    def embedder(self, name: str) -> addition.StructureEmbedder | None:
        return addition.StructureEmbedder() if name == "addition-structure" else None


def of(cfg) -> Math | Addition:
    """The world of a config: the addition world when every fail@k pool is one of its pools."""
    pools = cfg.fail_at_k.pools
    inside = [p in addition.POOLS for p in pools]
    if any(inside) and not all(inside):
        raise ValueError(f"fail_at_k.pools {list(pools)} mix the addition world's pools with benchmarks")
    return Addition() if all(inside) and pools else Math()
