"""Problem records, JSONL I/O, benchmark loaders, the fail@k split and seed derivation.

Paper: the hard-problem pools (MATH, HARP, OlympiadBench) and the fail@128 filter with its 50/50
random train/test split (PAPER.md, "Data and evaluation protocol"). Everything that reads or writes a data file goes through here,
so the reliability contracts of DESIGN.md hold in one place:
- bad input raises `DataError` naming the file and 1-based line, and is detected while reading,
  before the caller has anything to write;
- every output is written atomically (temp file in the same directory, fsync, os.replace), so a
  crash or a serialization error leaves the previous file (or none), never half a file;
- every random choice is a function of integer seeds (`seed_from`) and of the *set* of problem ids,
  never of input order or of Python's salted `hash`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import operator
import os
import random
import re
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soar.paths import DATA_RAW

BENCHMARKS = {  # name -> file in data/raw (see its README for sources, row counts and quirks)
    "math_train": "math_train.jsonl",
    "math_test": "math_test.jsonl",
    "math500": "math500.jsonl",
    "gsm8k_train": "gsm8k_train.jsonl",
    "gsm8k_test": "gsm8k_test.jsonl",
    "olympiadbench": "olympiadbench.jsonl",
    "aime24": "aime24.jsonl",
    "amc23": "amc23.jsonl",
}
_CORE = ("id", "problem", "answer", "answers", "multiple")
# Source spellings of the core fields (OlympiadBench); mapped on load, not kept twice in metadata.
_ALIASES = {"answer_list": "answers", "is_multiple_answer": "multiple"}


class DataError(ValueError):
    """Malformed data; the message starts with `file:line:` (line 0 = the file as a whole)."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path, self.line = Path(path), line
        super().__init__(f"{path}:{line}: {message}")


class DataWarning(UserWarning):
    """Records skipped on load (e.g. MATH train's two empty answers)."""


_WARNED: dict = {}  # warnings' once-per-location registry for DataWarning (see load_problems_report)


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer(s); the unit of every dataset in the pipeline."""

    id: str
    problem: str
    answer: str  # the canonical reference, LaTeX where the source uses it
    answers: tuple[str, ...] = ()  # every accepted answer; () means (answer,)
    multiple: bool = False  # OlympiadBench is_multiple_answer: every part must be right
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)  # level, subject, counts...

    def __post_init__(self):
        for name in ("id", "problem", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"field {name!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"field {name!r} is empty")
        answers = tuple(self.answers) or (self.answer,)
        if not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(f"answers must be non-empty strings, got {list(answers)!r}")
        if not isinstance(self.multiple, bool):
            raise TypeError(f"field 'multiple' must be a bool, got {self.multiple!r}")
        clash = sorted(set(self.metadata) & set(_CORE + tuple(_ALIASES)))
        if clash:
            raise ValueError(f"metadata repeats core field(s) {clash}")
        object.__setattr__(self, "answers", answers)
        object.__setattr__(self, "metadata", dict(self.metadata))  # a private copy

    def to_dict(self) -> dict:
        """Flat JSON-ready record: core fields first, then metadata (as in the raw files)."""
        return {"id": self.id, "problem": self.problem, "answer": self.answer,
                "answers": list(self.answers), "multiple": self.multiple, **self.metadata}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Problem:
        """Inverse of `to_dict`; also reads raw records (answer_list, is_multiple_answer).
        Unknown keys go to metadata. Numeric answers become strings; anything else is an error."""
        d = {_ALIASES.get(k, k): v for k, v in d.items()}
        missing = [k for k in ("id", "problem", "answer") if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        answers = d.get("answers") or ()
        if not isinstance(answers, (list, tuple)):
            raise TypeError(f"field 'answers' must be a list, got {type(answers).__name__}")
        return cls(id=d["id"], problem=d["problem"], answer=_as_answer(d["answer"]),
                   answers=tuple(_as_answer(a) for a in answers), multiple=d.get("multiple", False),
                   metadata={k: v for k, v in d.items() if k not in _CORE})


def _as_answer(value: Any) -> Any:
    # JSON numbers are legitimate answers (user files often store 42, not "42"); bools are not.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return value  # Problem.__post_init__ rejects non-strings with a typed message


# ---------------------------------------------------------------- JSONL / JSON I/O


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key(s) {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, line_no, f"not UTF-8 ({e.reason})") from None
            if not text.strip():
                continue
            try:
                rec = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicate_keys)
            except ValueError as e:  # JSONDecodeError is a ValueError
                raise DataError(path, line_no, f"invalid JSON: {e}") from None
            if not isinstance(rec, dict):
                raise DataError(path, line_no, f"expected a JSON object, got {type(rec).__name__}")
            yield line_no, rec


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSONL file; blank lines are skipped, anything malformed is a DataError."""
    return [rec for _, rec in _iter_jsonl(path)]


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w"):
    """Open a temp file next to `path`; on clean exit fsync and rename it over `path`.
    On any exception the temp file is removed and `path` is untouched. Creates parent dirs."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows when on the same filesystem
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[Mapping | Problem]) -> None:
    """One JSON object per line (Problems via to_dict), atomically. NaN/inf are refused."""
    with atomic_write(path) as f:
        for rec in records:
            rec = rec.to_dict() if isinstance(rec, Problem) else rec
            f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")


def write_json(path: str | Path, obj: Any) -> None:
    """Pretty, key-sorted JSON (metrics.json and friends), atomically. NaN/inf are refused."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic_write(path) as f:
        f.write(text)


def read_json(path: str | Path) -> Any:
    """A JSON file written by write_json; a broken one is an error naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON: {e.msg}") from None


# ---------------------------------------------------------------- loaders


def load_problems_report(path: str | Path, *, skip_empty_answers: bool = True,
                         default_id=None) -> tuple[list[Problem], list[str]]:
    """(problems, ids skipped for an empty answer). Every line is validated before returning.
    `default_id(line_no)` names records without an `id` (user files such as HARP.jsonl)."""
    problems, skipped, first_line = [], [], {}
    for line_no, rec in _iter_jsonl(path):
        if "id" not in rec and default_id is not None:
            rec = {"id": default_id(line_no), **rec}
        pid = rec.get("id")
        if isinstance(pid, str) and pid in first_line:
            raise DataError(path, line_no, f"duplicate id {pid!r} (first on line {first_line[pid]})")
        if isinstance(pid, str):
            first_line[pid] = line_no
        answer = rec.get("answer")
        if skip_empty_answers and isinstance(pid, str) and isinstance(answer, str) and not answer.strip():
            skipped.append(pid)
            continue
        try:
            problems.append(Problem.from_dict(rec))
        except (TypeError, ValueError) as e:
            raise DataError(path, line_no, f"record {pid!r}: {e}") from None
    if skipped:  # located at the data file's line, not at a caller's (a temp path in a notebook)
        warnings.warn_explicit(f"skipped {len(skipped)} record(s) with an empty answer: {skipped}", DataWarning,
                               filename=str(path), lineno=first_line[skipped[0]], registry=_WARNED)
    return problems, skipped


def load_problems(path: str | Path, *, skip_empty_answers: bool = True) -> list[Problem]:
    """Problems of a normalized JSONL file (see load_problems_report)."""
    return load_problems_report(path, skip_empty_answers=skip_empty_answers)[0]


def load_harp(path: str | Path) -> list[Problem]:
    """A user's own HARP.jsonl (Yue et al. 2024; fields problem, answer, level, subject, year,
    contest, ...). Records without an `id` get `harp/<line>`, stable for a given file."""
    return load_problems_report(path, default_id=lambda line: f"harp/{line}")[0]


def level_of(p: Problem) -> int | None:
    """Difficulty as an int: MATH's "Level 3" -> 3, HARP's 3 -> 3; None if absent ("Level ?")."""
    lv = p.metadata.get("level")
    if isinstance(lv, int) and not isinstance(lv, bool):
        return lv
    m = re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", lv) if isinstance(lv, str) else None
    return int(m[1]) if m else None


def filter_problems(problems: Sequence[Problem], *, levels: Iterable[int] | None = None,
                    subjects: Iterable[str] | None = None) -> list[Problem]:
    """Keep problems whose level / subject is listed. A requested value that occurs nowhere in
    the pool is an error (a typo, or a level filter on GSM8K), not a silently empty result."""
    out = list(problems)
    for key, wanted, get in (("level", levels, level_of), ("subject", subjects,
                                                           lambda p: p.metadata.get("subject"))):
        if wanted is None:
            continue
        wanted = set(wanted)
        present = {get(p) for p in out} - {None}
        if not wanted <= present:
            raise ValueError(f"{key}(s) {sorted(wanted - present, key=str)} not in this pool; "
                             f"present: {sorted(present, key=str) or 'none'}")
        out = [p for p in out if get(p) in wanted]
    return out


def load_benchmark(name: str, raw_dir: str | Path = DATA_RAW, *, levels: Iterable[int] | None = None,
                   subjects: Iterable[str] | None = None, limit: int | None = None,
                   seed: int = 0) -> list[Problem]:
    """A benchmark of BENCHMARKS, filtered; `limit` keeps a seeded sample of at most that many
    (files are grouped by subject, so a prefix would be biased), in file order."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    problems = filter_problems(load_problems(Path(raw_dir) / BENCHMARKS[name]),
                               levels=levels, subjects=subjects)
    if limit is not None and limit < len(problems):
        keep = {p.id for p in sample_problems(problems, limit, seed=seed)}
        problems = [p for p in problems if p.id in keep]
    return problems


def verify_checksums(raw_dir: str | Path = DATA_RAW) -> None:
    """Check every file listed in the sha256 block of raw_dir/README.md; DataError lists all
    mismatching or missing files."""
    readme = Path(raw_dir) / "README.md"
    expected = re.findall(r"^([0-9a-f]{64}) [ *](\S+)\s*$", readme.read_text("utf-8"), re.M)
    if not expected:
        raise DataError(readme, 0, "no sha256 lines ('<hex>  <file>') found")
    bad = []
    for digest, name in expected:
        f = Path(raw_dir) / name
        if not f.is_file():
            bad.append(f"{name} (missing)")
            continue
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            bad.append(f"{name} (sha256 {h.hexdigest()[:12]}..., expected {digest[:12]}...)")
    if bad:
        raise DataError(readme, 0, "checksum mismatch: " + ", ".join(bad))


# ---------------------------------------------------------------- seeds, fail@k split, sampling


def seed_from(*ints: int) -> int:
    """A 63-bit seed from integers (root seed, step, index, ...): sha256 of their decimal form,
    the same on every machine and Python version (unlike `hash`). Use % 2**32 for 32-bit APIs."""
    if not ints:
        raise ValueError("seed_from needs at least one integer")
    if any(isinstance(i, bool) for i in ints):
        raise TypeError("seed_from takes integers, not bools")
    text = ",".join(str(operator.index(i)) for i in ints)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def _by_id(problems: Iterable[Problem]) -> list[Problem]:
    ordered = sorted(problems, key=lambda p: p.id)
    for a, b in zip(ordered, ordered[1:]):
        if a.id == b.id:
            raise ValueError(f"duplicate problem id {a.id!r}")
    return ordered


def split_fail_at_k(problems: Sequence[Problem], successes: Sequence[int], *, seed: int,
                    train_fraction: float = 0.5) -> tuple[list[Problem], list[Problem]]:
    """fail@k: keep the problems with 0 successes out of k samples and split them at random into
    (D_train, D_test); D_train gets floor(n * train_fraction). The split depends only on the set of
    ids and the seed (shuffle of the id-sorted list); each part is returned sorted by id."""
    if len(problems) != len(successes):
        raise ValueError(f"{len(problems)} problems but {len(successes)} success counts")
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    if any(operator.index(s) < 0 for s in successes):
        raise ValueError("success counts must be >= 0")
    hard = _by_id(p for p, s in zip(problems, successes) if s == 0)
    random.Random(seed).shuffle(hard)
    n_train = math.floor(len(hard) * train_fraction + 1e-9)  # 1e-9: 0.29 * 100 is 28.999...
    return _by_id(hard[:n_train]), _by_id(hard[n_train:])


def sample_problems(problems: Sequence[Problem], n: int, *, seed: int | Sequence[int]) -> list[Problem]:
    """n problems without replacement (e.g. Q_R each outer step: seed=(root_seed, step)),
    a function of the set of ids and the seed only."""
    pool = _by_id(problems)
    if not 0 <= n <= len(pool):
        raise ValueError(f"cannot sample {n} of {len(pool)} problems")
    ints = (seed,) if isinstance(seed, int) else tuple(seed)
    return random.Random(seed_from(*ints)).sample(pool, n)


HARP_FILE = "HARP.jsonl"  # a user's own copy, placed in data/raw/ (not shipped; see README)


def load_pool(name: str, raw_dir: str | Path = DATA_RAW, *, levels: Iterable[int] | None = None,
              limit: int | None = None, seed: int = 0) -> list[Problem]:
    """A fail@k pool of the paper's world: a benchmark of BENCHMARKS or `harp` from the user's
    data/raw/HARP.jsonl (other worlds' pools: soar.worlds)."""
    if name != "harp":
        return load_benchmark(name, raw_dir, levels=levels, limit=limit, seed=seed)
    path = Path(raw_dir) / HARP_FILE
    if not path.exists():
        raise FileNotFoundError(f"pool 'harp' needs your own copy of HARP at {path} (see README)")
    return limit_problems(filter_problems(load_harp(path), levels=levels), limit, seed)


def limit_problems(problems: Sequence[Problem], limit: int | None, seed: int) -> list[Problem]:
    """A seeded sample of `limit` problems, in their pool's order (all of them: limit None)."""
    if limit is None or limit >= len(problems):
        return list(problems)
    keep = {p.id for p in sample_problems(problems, limit, seed=seed)}
    return [p for p in problems if p.id in keep]
