"""Answer extraction, bounded answer checking, the shaped student reward, teacher-output parsing.

Every reward of the project goes through this module (PAPER.md: "Student reward", and the teacher's
rejection sampling; the grounded teacher reward counts `is_correct` verdicts of greedy answers).

- `extract_answer`: the last `\\boxed{...}` (nested braces), `\\boxed 5`, `\\fbox{...}`, else an
  optional "the (final) answer is X" fallback. One linear scan: hostile text cannot make it slow.
- `is_correct` / `Grader`: a cheap normalized-string and exact-rational fast path, then math-verify
  in a pool of worker *processes*. math-verify's own timeout is SIGALRM, which works only in a
  process's main thread and cannot interrupt a long C-level computation (10^{10^{10}}), and peers
  (verl, TRL) shipped hangs from this. So each check runs in a worker's main thread under a soft
  alarm, inside an outer wall-clock deadline: a worker that misses it is killed and replaced, the
  check scores False and is counted in `Grader.stats["timeouts"]`. Model text is never executed:
  it is only parsed by math-verify's LaTeX grammar (ANTLR), never passed to eval or raw sympify.
- `student_reward`: the shaped reward, strictly decreasing over the four cases of the paper (the
  "reference present" case looks in the boxed answer, not the whole completion).
- `parse_teacher_output`: `<question>...</question><answer>\\boxed{...}</answer>` or a Rejection.

Equivalence policy (what counts as the same answer; the tests pin every line):
- Numbers compare exactly as rationals, never as floats: 10^20+1 != 10^20, 0.5 == 1/2, and a
  decimal approximation of a fraction is wrong (0.333 != 1/3: MATH answers are exact). A decimal
  inside an expression is read as the exact rational it spells (0.5x == x/2).
- A comma followed by exactly three digits inside a pure number is a thousands separator
  ("1,000" == 1000, "3,\\!200" == 3200, "1{,}000" == 1000); any other comma separates items
  ("1,2" is a list). Space-grouped digits ("10 000") are one number too. Inside a list, a
  separator is recognised only where the list cannot be read otherwise (`_list_thousands`):
  `{,}` before three digits always is one ("1{,}000,2{,}500" == "1000, 2500"); a bare comma is
  one when the items are separated by comma + space and every comma without a space sits in a
  well-formed grouped number ("1,000, 2,500" and "\\{1,000, 2,500\\}" are two numbers). A list
  without spaces stays items ("1,000,2,000" is four items), as does one that also uses bare
  commas as separators ("1,2, 3,000").
- Decorations are dropped on both sides before comparing: `$`/`\\$`, "dollars", `\\%`/"percent"
  (so 50\\% == 50, and 50\\% != 0.5), degrees (30^\\circ == 30), trailing unit words and trailing
  `\\text{...}` units ("5 \\text{ cm}" == 5), `\\left`/`\\right`, LaTeX spacing, `\\dfrac`/`\\tfrac`.
  Single-letter units are stripped only inside `\\text{}`: "2m" stays 2*m, a variable.
- `2\\frac{1}{2}` (an integer directly before a numeric fraction) is a mixed number, 5/2.
- Radicals and fractional powers are the same number ("2^{1/2}" == "\\sqrt{2}", "8^{1/3}" == 2,
  also with an unbraced "2^\\frac12"). An odd root of a negative number is the real root, as in
  MATH ("\\sqrt[3]{-8}" == "(-8)^{1/3}" == -2, "(-8)^{2/3}" == 4), not sympy's principal complex
  root; even roots of negatives stay complex.
- A number with a base subscript (2516_8, 1011_{2}) equals only the same digits in the same base.
- Parenthesized pairs are ordered tuples or intervals (math-verify decides which): (3,5) != (5,3),
  [1,2) != [1,2]; bare comma lists and \\{...\\} sets are unordered: "3, 5" == "5, 3".
  `\\pm 2` == "2, -2". "x = 5" == 5 (math-verify's assignment rule).
- `multiple=True` (OlympiadBench is_multiple_answer): the prediction must contain every part of
  the gold answer(s), each exactly once, in any order ("3, 5" vs ["5", "3"]).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as _wait_conns

# ---------------------------------------------------------------- constants

# Shaped student reward (PAPER.md, "Student reward"). The paper orders the four cases but its
# magnitudes are garbled in the text we have; these are our choice. Strictly decreasing.
REWARD_CORRECT = 1.0  # boxed and verified by math-verify
# Boxed, not verified, but the reference string appears in the *answer* (the boxed content), as
# PAPER.md states it ("appears in the answer"; the paper calls the boxed content the answer
# throughout). Not the whole completion: a completion mentions many small numbers on its way, so a
# whole-completion test would pay most boxed-but-wrong answers whose reference is a small integer.
REWARD_REFERENCE_PRESENT = 0.5
REWARD_BOXED = 0.1  # boxed but wrong (format credit)
REWARD_NONE = 0.0  # no box

MAX_ANSWER_CHARS = 1000  # a longer answer (or gold; real ones are <= 204) is not parsed: False
MAX_TEACHER_CHARS = 8000  # teacher outputs are <= 512 tokens (Table 3); longer text is rejected
REJECTION_REASONS = ("missing_tags", "empty_question", "no_boxed", "unparsable_answer", "too_long")

_STARTUP_TIMEOUT_S = 120.0  # a worker must import math-verify within this, else grading is broken


# ---------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TOKEN = re.compile(r"[^\s$]+")  # the argument of "\boxed 5"
_ANSWER_IS = re.compile(r"(?i)\bthe\s+(?:final\s+)?answer\s+is\b\s*:?")


def _box_spans(text: str) -> list[tuple[int, str]]:
    """(start, content) of every complete box, sorted by start. Linear: one regex pass for the
    commands and one character pass that matches braces with a stack (escaped \\{ \\} are
    literal characters in LaTeX, not groups, so they are skipped)."""
    spans: list[tuple[int, str]] = []
    opens: dict[int, int] = {}  # index of a box's "{" -> start of its command
    n = len(text)
    for m in _BOX.finditer(text):
        j = m.end()
        while j < n and text[j].isspace():
            j += 1
        if j < n and text[j] == "{":
            opens[j] = m.start()
        elif j > m.end() and j < n:  # "\boxed 5": the next whitespace-free token
            tok = _TOKEN.match(text, j)
            if tok and tok.group(0).rstrip(".,;"):
                spans.append((m.start(), tok.group(0).rstrip(".,;")))
    if opens:
        stack: list[int] = []
        for i in range(min(opens), n):
            c = text[i]
            if c != "{" and c != "}":
                continue
            if i and text[i - 1] == "\\" and not (i > 1 and text[i - 2] == "\\"):
                continue  # \{ or \}: a literal brace
            if c == "{":
                stack.append(i)
            elif stack:
                o = stack.pop()
                if o in opens:
                    spans.append((opens[o], text[o + 1 : i].strip()))
    spans.sort(key=lambda s: s[0])
    return spans


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete \\boxed{...} / \\fbox{...} / \\boxed 5, in order of appearance."""
    return [c for _, c in _box_spans(text)]


def _strip_answer_text(s: str) -> str:
    """Clean a fallback answer: the sentence it ends, markdown bold, math delimiters, final period."""
    s = s.strip()
    if ". " in s:
        s = s.split(". ", 1)[0]
    s = s.strip().strip("*").strip()
    for a, b in (("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a) : len(s) - len(b)]
    s = s.strip().rstrip(".").strip().strip("$").strip().rstrip(".").strip()
    return s


def extract_answer(completion: str, *, fallback: bool = True) -> str | None:
    """The content of the last complete box; else, with `fallback`, the text after the last
    "the (final) answer is" on its line. None when there is no answer (or an empty box)."""
    if not completion:
        return None
    spans = _box_spans(completion)
    if spans:
        return spans[-1][1] or None
    if fallback:
        last = None
        for last in _ANSWER_IS.finditer(completion):
            pass
        if last is not None:
            end = completion.find("\n", last.end())
            rest = completion[last.end() : end if end >= 0 else len(completion)][:300]
            return _strip_answer_text(rest) or None
    return None


# ---------------------------------------------------------------- normalization (both sides)

_TEXT_CMD = r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|operatorname)\s*"
_WHOLE_TEXT = re.compile(rf"^{_TEXT_CMD}\{{([^{{}}]*)\}}$")
_POWER = r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?"  # cm^2, \text{ units}^3
_TRAILING_TEXT = re.compile(rf"^(.*?[\d}})\]a-zA-Z])\s*{_TEXT_CMD}\{{\s*([a-zA-Z][a-zA-Z .]*)\}}{_POWER}$")
_UNIT_WORDS = (
    r"(?:(?:square|sq\.?|cubic|cu\.?)\s+)?"
    r"(?:units?|dollars?|cents?|cm|mm|km|meters?|metres?|kilometers?|centimeters?|millimeters?|"
    r"inch(?:es)?|feet|foot|ft|yards?|yds?|miles?|mph|kph|km/h|m/s|hours?|hrs?|minutes?|mins?|"
    r"seconds?|secs?|days?|weeks?|months?|years?|degrees?|radians?|kg|grams?|kilograms?|mg|lbs?|"
    r"pounds?|ounces?|oz|liters?|litres?|ml|gallons?|percent|people|persons?|students?|ways?|times)"
)
_TRAILING_UNIT = re.compile(rf"^(.*?[\d}})])\s+{_UNIT_WORDS}{_POWER}\.?$", re.IGNORECASE)
_DELIMS = re.compile(r"(?<!\\)\\(?:[()\[\]!,]|displaystyle(?![a-zA-Z]))")
_SPACES = re.compile(r"(?<!\\)\\(?:[;: ]|q?quad(?![a-zA-Z]))|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])\.?")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ$|°|\\degree")
_MIXED = re.compile(r"^(-?)(\d+)\s*\\frac\s*(?:\{(\d+)\}\{(\d+)\}|(\d)(\d))$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SPACED_THOUSANDS = re.compile(r"^-?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_GROUPED = re.compile(r"(?<![\w.])(?<!\d,)\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\w|,\d)")  # 1,000 or 12,500.5 in a list
_UNBRACED_FRAC_POWER = re.compile(r"(?<=\^)\s*(\\frac\s*(?:\{[^{}]*\}\s*\{[^{}]*\}|\d\d))")


def _list_thousands(s: str) -> str:
    """Thousands separators inside a list ("1,000, 2,500" -> "1000, 2500"), where no other
    reading is possible: the items are separated by comma + space, and every comma not followed by
    a space lies inside a well-formed grouped number (1-3 digits, then groups of exactly three).
    Otherwise (no list spacing: "1,000,2,000"; bare commas also separating items: "1,2, 3,000")
    the text is left as it is, and its commas separate items."""
    if not re.search(r",\s", s):
        return s
    grouped = [m.span() for m in _GROUPED.finditer(s)]
    tight = [i for i, c in enumerate(s) if c == "," and not s[i + 1 : i + 2].isspace()]
    if not tight or not all(any(a < i < b for a, b in grouped) for i in tight):
        return s
    return _GROUPED.sub(lambda m: m.group(0).replace(",", ""), s)


def clean_answer(ans: str) -> str:
    """Canonical LaTeX for an answer, applied to gold and prediction alike (see the module
    docstring for the policy). Keeps meaningful spaces (\\pi r); `_key` drops them."""
    s = ans.strip()
    s = re.sub(r"(?<!\\)\$", "", s)  # math delimiters; OlympiadBench golds look like "$69$,$84$"
    s = _DELIMS.sub("", s)  # \( \) \[ \] \displaystyle \! \, (but not a matrix row break "\\")
    s = _SPACES.sub(" ", s)
    s = s.replace("\\varnothing", "\\emptyset")
    s = re.sub(r"(?<=\d)\{,\}(?=\d{3}(?!\d))", "", s)  # 1{,}000: LaTeX's explicit thousands separator
    s = re.sub(r"\s*\{\s*,\s*\}\s*", ",", s)  # any other {,} is a plain comma (3{,}14)
    s = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", s)
    s = _UNBRACED_FRAC_POWER.sub(r"{\1}", s)  # 2^\frac12: math-verify reads only "2^{\frac12}"
    s = _LEFT_RIGHT.sub("", s)
    s = s.replace("\\$", "").replace("\\%", "").replace("%", "")
    s = _DEGREES.sub("", s)
    s = " ".join(s.split()).rstrip(".").strip()
    for _ in range(2):  # "\text{5 cm}" -> "5 cm" -> "5"; "4 \text{ cm}^2" -> "4"
        if m := _WHOLE_TEXT.match(s):
            s = m.group(1).strip()
        if m := _TRAILING_TEXT.match(s):
            s = m.group(1).strip()
        if m := _TRAILING_UNIT.match(s):
            s = m.group(1).strip()
        if s.lower().endswith(" percent"):
            s = s[: -len(" percent")].strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    elif "," in s:
        s = _list_thousands(s)
    elif _SPACED_THOUSANDS.match(s):
        s = s.replace(" ", "")
    if m := _MIXED.match(s):  # 2\frac{1}{2} -> \frac{5}{2}
        whole, num, den = int(m[2]), int(m[3] or m[5]), int(m[4] or m[6])
        if den:
            s = f"{m[1]}\\frac{{{whole * den + num}}}{{{den}}}"
    return s


def _key(clean: str) -> str:
    """Fast-path comparison key: the cleaned answer without any whitespace."""
    return re.sub(r"\s+", "", clean)


_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_PLAIN = re.compile(rf"^{_NUM}(?:[eE][+-]?\d{{1,4}})?$")  # 1.5e3 is exact too
_FRAC = re.compile(rf"^([+-]?)\\frac(?:\{{({_NUM})\}}\{{({_NUM})\}}|(\d)(\d))$")
_SLASH = re.compile(rf"^({_NUM})/({_NUM})$")


_ASSIGN = re.compile(r"^[a-zA-Z]=")  # "n=" before an answer
_BASE = re.compile(r"^(?=[0-9A-Z]*\d)([0-9A-Z]+)_(?:(\d+)|\{(\d+)\})$")  # 2516_8, 1011_{2}


def exact_number(key: str) -> Fraction | None:
    """A plain integer, decimal or numeric fraction as an exact rational (never a float)."""
    if len(key) > 400:  # far beyond any real answer; Python caps int() at 4300 digits anyway
        return None
    try:
        if _PLAIN.match(key):
            return Fraction(key)
        if m := _SLASH.match(key):
            return Fraction(m[1]) / Fraction(m[2])
        if m := _FRAC.match(key):
            value = Fraction(m[2] or m[4]) / Fraction(m[3] or m[5])
            return -value if m[1] == "-" else value
    except ZeroDivisionError:
        return None
    return None


def split_answers(ans: str) -> list[str]:
    """Items of a comma/semicolon list at bracket depth 0 ("(1,2), 3" -> ["(1,2)", "3"]); a comma
    followed directly by three digits inside a leading number stays a thousands separator."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(ans):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c in ",;" and depth == 0:
            if c == "," and re.match(r"\d{3}(?!\d)", ans[i + 1 : i + 5]) and \
                    re.fullmatch(r"\s*-?\d{1,3}(?:,\d{3})*", ans[start:i]):
                continue  # 1,000 inside a list item
            parts.append(ans[start:i])
            start = i + 1
    parts.append(ans[start:])
    return [p.strip() for p in parts if p.strip()]


# ---------------------------------------------------------------- worker side (math-verify)

_MV_CONFIG = None


def _mv_parse(s: str, fallback: bool):
    """math-verify parse of one cleaned answer, wrapped in \\boxed{} so braces delimit it."""
    from math_verify import parse

    global _MV_CONFIG
    if _MV_CONFIG is None:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig

        # units=False: math-verify strips one-letter "units" (2m -> 2, 4t -> 4), a false positive
        # for variables; clean_answer strips real units itself.
        _MV_CONFIG = [LatexExtractionConfig(
            boxed_match_priority=0,
            normalization_config=NormalizationConfig(basic_latex=True, units=False, malformed_operators=True,
                                                     nits=True, boxed="all", equations=False))]
    # Timeouts off inside math-verify: the worker's own alarm and the parent's deadline bound it.
    return parse("\\boxed{" + s + "}", extraction_config=_MV_CONFIG,
                 fallback_mode="first_match" if fallback else "no_fallback", parsing_timeout=None)


def _exact(x):
    """x with every decimal Float replaced by the exact rational it spells (0.5 -> 1/2)."""
    import sympy

    floats = x.atoms(sympy.Float) if isinstance(x, sympy.Basic) else set()
    return x.xreplace({f: sympy.Rational(str(f)) for f in floats}) if floats else x


def _real_roots(x):
    """x with every odd root of a negative number taken as the real root, as MATH means it:
    sympy's (-8)^{1/3} is the principal root 1 + sqrt(3) i, so \\sqrt[3]{-8} != -2. Each b^{p/q}
    with b a negative rational and q odd becomes (-1)^p |b|^{p/q}; even roots ((-4)^{1/2} = 2i)
    are left alone."""
    import sympy

    if not isinstance(x, sympy.Basic):
        return x
    odd = {a: sympy.Integer(-1) ** a.exp.p * sympy.Pow(-a.base, a.exp) for a in x.atoms(sympy.Pow)
           if isinstance(a.base, sympy.Rational) and a.base < 0 and isinstance(a.exp, sympy.Rational)
           and a.exp.q % 2 == 1 and a.exp.q > 1}
    return x.xreplace(odd) if odd else x


def _rational_value(x):
    """The exact rational value of a closed-form number, or None (symbols, sets, irrationals, or
    a power too big to evaluate safely)."""
    import sympy

    if not isinstance(x, sympy.Expr) or x.free_symbols:
        return None
    for p in x.atoms(sympy.Pow):
        if not (isinstance(p.exp, sympy.Integer) and abs(int(p.exp)) <= 10_000):
            return None  # 10^{10^{10}}: never evaluate, let the symbolic comparison decide
    v = x.doit()
    return v if isinstance(v, sympy.Rational) else None


def _mv_equal(gold: str, pred: str) -> bool:
    """Runs in a worker: math-verify equivalence, with exact rationals instead of float rounding."""
    from math_verify import verify

    g, p = _mv_parse(gold, True), _mv_parse(pred, True)
    if not g or not p:
        return False
    g = [_real_roots(_exact(x)) for x in g]
    p = [_real_roots(_exact(x)) for x in p]
    gv, pv = _rational_value(g[0]), _rational_value(p[0])
    if gv is not None and pv is not None:  # both exact numbers: exact comparison, no tolerance
        return bool(gv == pv)
    return bool(verify(g, p, allow_set_relation_comp=True, timeout_seconds=None))


def _mv_parses(answer: str) -> bool:
    """Runs in a worker: can math-verify turn the answer into a mathematical object?"""
    return bool(_mv_parse(answer, False))


_TASKS = {"equal": _mv_equal, "parses": _mv_parses}


class _SoftDeadline(BaseException):
    """Raised by the worker's alarm; BaseException so library `except Exception` cannot eat it."""


def _on_alarm(signum, frame):
    raise _SoftDeadline


def _worker_entry() -> None:
    """Entry point of a worker interpreter: argv = (read fd, write fd, memory_mb)."""
    rfd, wfd, memory_mb = (int(x) for x in sys.argv[1:4])
    _worker_main(Connection(rfd, writable=False), Connection(wfd, readable=False), memory_mb)


def _cap_memory(memory_mb: int) -> None:
    """Cap the worker's address space at its current size + memory_mb: a 10^(10^10)-style
    blowup becomes a quick MemoryError instead of swapping the machine. Best effort: skipped
    where /proc or RLIMIT_AS is unavailable (macOS); the wall-clock deadline still holds."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")  # ~65 MB warm
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        limit = current + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    except (ImportError, OSError, ValueError):
        pass


def _worker_main(inbox, conn, memory_mb: int) -> None:
    """Worker loop: receive (kind, args, soft_timeout), answer (status, verdict)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, _on_alarm)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # "timeout disabled" warnings are intended
    from math_verify.errors import TimeoutException

    _mv_parses("1")  # import and warm up sympy before saying ready (not on anyone's deadline)
    if memory_mb:
        _cap_memory(memory_mb)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg is None:
            return
        kind, args, soft = msg
        status, verdict = "ok", False
        try:
            signal.setitimer(signal.ITIMER_REAL, soft)
            try:
                verdict = bool(_TASKS[kind](*args))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftDeadline:
            status = "timeout"
        except (Exception, TimeoutException):  # noqa: BLE001 - model text may break any parser path
            status = "error"
        try:
            conn.send((status, verdict))
        except (BrokenPipeError, OSError):
            return


# ---------------------------------------------------------------- the pool


class _Worker:
    """One worker process and its pipes; `task` is the index it is working on, or None.

    Started as a fresh interpreter (`python -c ...`), like multiprocessing's 'spawn': nothing of a
    parent that holds torch threads is inherited (fork-without-exec can deadlock there), and,
    unlike 'spawn', the caller's __main__ module is not re-imported, so a script without an
    `if __name__ == "__main__"` guard still works."""

    def __init__(self, memory_mb: int):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # so `soar` imports
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from soar.grading import _worker_entry; _worker_entry()",
                 str(to_child_r), str(from_child_w), str(memory_mb)],
                pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.conn = Connection(from_child_r, writable=False)
        self.ready = False
        self.started = time.monotonic()
        self.task: int | None = None
        self.deadline = 0.0

    def stop(self, kill: bool) -> None:
        if not kill and self.proc.poll() is None:
            try:
                self.send_conn.send(None)
                self.proc.wait(0.5)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()  # stuck in C code (a huge integer power): it never returns on its own
        try:
            self.proc.wait(5.0)  # reap it: no zombies
        except subprocess.TimeoutExpired:
            pass
        self.send_conn.close()
        self.conn.close()


_LIVE: weakref.WeakSet[Grader] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for g in list(_LIVE):
        g.close()


class Grader:
    """Bounded answer checking over a pool of math-verify worker processes.

    Use as a context manager (or call `close`; an atexit hook closes any left open). Workers start
    lazily, on the first check the fast path cannot decide, each a fresh interpreter (see
    `_Worker`), and are reaped on close. `stats` counts calls (answer checks asked for),
    fast_path (decided in-process, without math-verify), math_verify (worker tasks run),
    timeouts (scored False), kills (workers killed at the hard deadline), crashes (workers that
    died; the task is retried once), too_long (predictions over MAX_ANSWER_CHARS).
    """

    def __init__(self, timeout: float = 5.0, workers: int | None = None, *, memory_mb: int = 2048,
                 soft_fraction: float | None = 0.8):
        """timeout: wall-clock seconds per math-verify check (a miss scores False). workers: worker
        processes (default: half the CPUs, 2 to 8). memory_mb: address-space budget per worker (0 =
        unlimited). soft_fraction: the worker's own alarm fires at this fraction of the deadline,
        which is cheaper than a kill and restart; None leaves only the hard kill."""
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.soft_fraction = soft_fraction
        self.workers = workers or max(2, min(8, (os.cpu_count() or 2) // 2))
        self.memory_mb = memory_mb
        self.stats = {"calls": 0, "fast_path": 0, "math_verify": 0, "timeouts": 0, "kills": 0,
                      "crashes": 0, "too_long": 0}
        self._pool: list[_Worker] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()
        _LIVE.add(self)

    # -- lifecycle
    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: modules may already be gone
            pass

    def close(self) -> None:
        """Stop every worker (killing stuck ones) and reap them. The grader stays usable."""
        if os.getpid() != self._pid:  # a forked child must not touch its parent's workers
            self._pool, self._pid = [], os.getpid()
            return
        pool, self._pool = self._pool, []
        for w in pool:
            w.stop(kill=w.task is not None)

    def _spawn(self) -> _Worker:
        return _Worker(self.memory_mb)

    # -- running tasks under deadlines
    def _execute(self, tasks: list[tuple[str, tuple]]) -> list[bool]:
        """Run (kind, args) tasks over the pool; each gets `timeout` seconds of wall clock from the
        moment a warm worker receives it. Misses score False; the stuck worker is replaced."""
        if not tasks:
            return []
        if os.getpid() != self._pid:
            self.close()
        todo = deque(range(len(tasks)))
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        soft = max(0.05, self.soft_fraction * self.timeout) if self.soft_fraction else 0.0
        try:
            return self._schedule(tasks, todo, soft)
        except BaseException:  # Ctrl-C or a broken install: no half-done task may leak into the next call
            self.close()
            raise

    def _schedule(self, tasks: list[tuple[str, tuple]], todo: deque, soft: float) -> list[bool]:
        """The dispatch loop of `_execute`: hand tasks to idle warm workers, collect verdicts,
        kill workers past their deadline."""
        results = [False] * len(tasks)
        attempts = [0] * len(tasks)
        while todo or any(w.task is not None for w in self._pool):
            now = time.monotonic()
            for w in self._pool:
                if w.ready and w.task is None and todo:
                    if w.proc.poll() is not None:  # died while idle (killed from outside): replace
                        self.stats["crashes"] += 1
                        self._replace(w)
                        break
                    i = todo.popleft()
                    kind, args = tasks[i]
                    attempts[i] += 1
                    try:
                        w.send_conn.send((kind, args, soft))
                    except (BrokenPipeError, OSError):  # died while idle: replace, retry the task
                        attempts[i] -= 1
                        todo.appendleft(i)
                        self._replace(w)
                        break
                    w.task, w.deadline = i, now + self.timeout
                    self.stats["math_verify"] += 1
            waiting = [w for w in self._pool if w.task is not None or not w.ready]
            if not waiting:
                continue
            due = min(w.deadline if w.task is not None else w.started + _STARTUP_TIMEOUT_S for w in waiting)
            ready = set(_wait_conns([w.conn for w in waiting], timeout=max(0.0, due - time.monotonic())))
            now = time.monotonic()
            for w in waiting:
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):  # the worker died (segfault, out of memory)
                        if not w.ready:
                            raise RuntimeError("a grading worker died while starting; is math-verify installed?")
                        self.stats["crashes"] += 1
                        if attempts[w.task] < 2:  # retry once on a fresh worker; a second death scores False
                            todo.appendleft(w.task)
                        self._replace(w)
                        continue
                    if not w.ready:
                        w.ready = True
                        continue
                    status, verdict = msg
                    results[w.task] = bool(verdict) and status == "ok"
                    self.stats["timeouts"] += status == "timeout"
                    w.task = None
                elif w.task is not None and now >= w.deadline:  # hard deadline: kill it
                    self.stats["timeouts"] += 1
                    self.stats["kills"] += 1
                    self._replace(w)
                elif not w.ready and now >= w.started + _STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"a grading worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")
        return results

    def _replace(self, w: _Worker) -> None:
        """Kill a worker (its task, if any, keeps the default False) and start a fresh one."""
        w.task = None
        w.stop(kill=True)
        self._pool[self._pool.index(w)] = self._spawn()

    # -- answer checking
    def _fast(self, pred: str, gold: str) -> bool | None:
        """Decide without math-verify when possible; None means 'ask math-verify'."""
        p, g = _key(pred), _key(gold)
        if p == g:
            return True
        bp, bg = _BASE.match(_ASSIGN.sub("", p)), _BASE.match(_ASSIGN.sub("", g))
        if bp or bg:  # math-verify drops subscripts: 4210_7 would equal 4210_2
            return bool(bp and bg and (bp[1], bp[2] or bp[3]) == (bg[1], bg[2] or bg[3]))
        ep, eg = exact_number(p), exact_number(g)
        if ep is not None and eg is not None:  # both plain numbers: exact rational comparison
            return ep == eg
        return None

    def _plan(self, pred, gold, multiple: bool):
        """A job's alternatives (any one passing makes it correct), or None for an outright False:
        ("any", pred, golds): pred equals one of the golds; ("match", pred_parts, gold_parts):
        a one-to-one matching of parts exists."""
        pred, gold = _as_text(pred), _as_text(gold)
        golds = [gold] if isinstance(gold, str) else [g for g in map(_as_text, gold) if isinstance(g, str)]
        if pred and len(pred) > MAX_ANSWER_CHARS:
            self.stats["too_long"] += 1
            return None
        golds = [c for c in (clean_answer(g) for g in golds if len(g) <= MAX_ANSWER_CHARS) if c]
        pred_c = clean_answer(pred) if pred else ""
        if not pred_c or not golds:  # nothing left to compare ("\$" alone is not an answer)
            return None
        if multiple:
            gold_parts = [part for g in golds for part in (split_answers(g) or [g])]
            pred_parts = split_answers(pred_c) or [pred_c]
            if len(pred_parts) == len(gold_parts):  # a one-to-one matching of parts, any order
                return [("match", [clean_answer(x) for x in pred_parts], [clean_answer(x) for x in gold_parts])]
            if len(pred_parts) < len(gold_parts):  # a compact form: \pm 2 against "2, -2"
                return [("any", pred_c, [", ".join(gold_parts)])]
            return None  # more parts than the gold has: extra (hedged) answers are wrong
        return [("any", pred_c, golds)]

    def grade_many(self, jobs: Sequence[tuple]) -> list[bool]:
        """Verdicts for (prediction, gold[, multiple]) jobs, math-verify checks run in parallel
        over the pool. gold may be a list of accepted answers (any one suffices) or, with
        multiple=True, the parts that must all appear (each exactly once, any order)."""
        with self._lock:
            plans, pairs, index = [], [], {}

            def need(g: str, p: str):
                """Fast-path verdict or the index of a math-verify task."""
                d = self._fast(p, g)
                if d is not None:
                    return d
                if (g, p) not in index:
                    index[(g, p)] = len(pairs)
                    pairs.append(("equal", (g, p)))
                return ("task", index[(g, p)])

            for job in jobs:
                pred, gold = job[0], job[1]
                multiple = bool(job[2]) if len(job) > 2 else False
                self.stats["calls"] += 1
                plan = self._plan(pred, gold, multiple)
                if plan is None:
                    plans.append(None)
                    continue
                resolved = []
                for kind, p, gs in plan:
                    if kind == "any":
                        resolved.append(("any", [need(g, p) for g in gs]))
                    else:  # matrix of part verdicts
                        resolved.append(("match", [[need(g, q) for g in gs] for q in p]))
                plans.append(resolved)
            mv = self._execute(pairs)

            def value(d) -> bool:
                return mv[d[1]] if isinstance(d, tuple) else bool(d)

            out = []
            for plan in plans:
                if plan is None:  # empty or too long: decided without comparing anything
                    self.stats["fast_path"] += 1
                    out.append(False)
                    continue
                ok, fast = False, True
                for kind, cells in plan:
                    if kind == "any":
                        fast &= not any(isinstance(d, tuple) for d in cells)
                        ok = ok or any(value(d) for d in cells)
                    else:
                        fast &= not any(isinstance(d, tuple) for row in cells for d in row)
                        ok = ok or _perfect_matching([[value(d) for d in row] for row in cells])
                    if ok:
                        break
                self.stats["fast_path"] += fast
                out.append(ok)
            return out

    def is_correct(self, prediction: str | None, gold: str | Sequence[str], multiple: bool = False) -> bool:
        """True when the prediction is equivalent to (one of) the gold answer(s)."""
        return self.grade_many([(prediction, gold, multiple)])[0]

    def parses(self, answer: str) -> bool:
        """Can math-verify turn this answer into a mathematical object (within the deadline)?"""
        if not answer or not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
            return False
        clean = clean_answer(answer)
        if not clean:
            return False
        if exact_number(_key(clean)) is not None:
            return True
        with self._lock:
            return self._execute([("parses", (clean,))])[0]


def _as_text(x):
    """Numbers are answers too (JSON files store 42, not "42"); bools are not."""
    return str(x) if isinstance(x, (int, float, Fraction)) and not isinstance(x, bool) else x


def _perfect_matching(ok: list[list[bool]]) -> bool:
    """Is there a one-to-one assignment of prediction parts (rows) to gold parts (columns)?
    Square matrices of a few parts: Kuhn's augmenting paths."""
    n = len(ok)
    if n == 0 or any(len(row) != n for row in ok):
        return False
    owner = [-1] * n

    def augment(r: int, seen: list[bool]) -> bool:
        for c in range(n):
            if ok[r][c] and not seen[c]:
                seen[c] = True
                if owner[c] < 0 or augment(owner[c], seen):
                    owner[c] = r
                    return True
        return False

    return all(augment(r, [False] * n) for r in range(n))


# ---------------------------------------------------------------- module-level API

_default: Grader | None = None
_default_lock = threading.Lock()


def default_grader() -> Grader:
    """The shared grader behind the module-level functions (created lazily, closed at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Grader()
        return _default


def is_correct(prediction: str | None, gold: str | Sequence[str], *, timeout: float = 5.0,
               multiple: bool = False) -> bool:
    """True when the prediction is mathematically equivalent to (one of) the gold answer(s);
    bounded by `timeout` seconds of math-verify time per check (a timeout scores False)."""
    g = default_grader()
    g.timeout = float(timeout)
    return g.is_correct(prediction, gold, multiple)


def grade_completions(completions: Sequence[str], golds: Sequence, grader: Grader | None = None, *,
                      multiple: bool | Sequence[bool] = False, fallback: bool = False) -> list[bool]:
    """Extract the boxed answer of each completion and check it against its gold (pass@k counts).
    golds[i] may be a list of accepted answers; `fallback` as in `extract_answer` (off: the
    student prompt demands a box, and the reward gives no credit without one)."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    flags = [multiple] * len(golds) if isinstance(multiple, bool) else list(multiple)
    grader = grader or default_grader()
    return grader.grade_many([(extract_answer(c, fallback=fallback), g, m)
                              for c, g, m in zip(completions, golds, flags)])


def _reference_present(answer: str, gold: str) -> bool:
    """Does the reference answer string appear in the (extracted) answer as a whole token? "4"
    must not match inside "14" or "4x" (a bare substring test would pay for any digit)."""
    for g in {gold.strip(), gold.strip().strip("$").strip(), clean_answer(gold)}:
        if not g:
            continue
        pattern = (r"(?<![A-Za-z0-9.])" if g[0].isalnum() else "") + re.escape(g) + \
                  (r"(?![A-Za-z0-9]|\.\d)" if g[-1].isalnum() else "")
        if re.search(pattern, answer):
            return True
    return False


def student_reward(completion: str, gold: str | Sequence[str], *, grader: Grader | None = None,
                   multiple: bool = False) -> float:
    """The shaped student reward (PAPER.md): verified > reference string present in the boxed
    answer > boxed > none. Only a box counts as an answer (no "the answer is" fallback): the
    student prompt asks for one."""
    return student_rewards([completion], [gold], grader=grader, multiple=multiple)[0]


def student_rewards(completions: Sequence[str], golds: Sequence, *, grader: Grader | None = None,
                    multiple: bool | Sequence[bool] = False) -> list[float]:
    """`student_reward` for a batch, with the math-verify checks run in parallel over the pool."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    flags = [multiple] * len(golds) if isinstance(multiple, bool) else list(multiple)
    preds = [extract_answer(c, fallback=False) for c in completions]
    boxed = [i for i, p in enumerate(preds) if p is not None]
    verdicts = (grader or default_grader()).grade_many([(preds[i], golds[i], flags[i]) for i in boxed])
    rewards = [REWARD_NONE] * len(completions)
    for i, ok in zip(boxed, verdicts):
        gold = _as_text(golds[i])
        alternatives = [gold] if isinstance(gold, str) else [_as_text(g) for g in gold]
        if ok:
            rewards[i] = REWARD_CORRECT
        elif any(isinstance(g, str) and _reference_present(preds[i], g) for g in alternatives):
            rewards[i] = REWARD_REFERENCE_PRESENT
        else:
            rewards[i] = REWARD_BOXED
    return rewards


# ---------------------------------------------------------------- teacher output (rejection sampling)


@dataclass(frozen=True)
class TeacherPair:
    """A valid teacher sample: the question and the boxed answer the student is trained against."""

    question: str
    answer: str  # the boxed content (the last box inside <answer>)
    raw_answer: str  # everything between <answer> and </answer>, stripped


@dataclass(frozen=True)
class Rejection:
    """Why a teacher sample was dropped by rejection sampling."""

    reason: str  # one of REJECTION_REASONS


def _first_pair(text: str, open_tag: str, close_tag: str, start: int = 0) -> tuple[int, int, int] | None:
    """(content start, content end, index after the close tag) of the first complete tag pair at
    or after `start`: the first closing tag that has an opening tag before it (innermost)."""
    close = text.find(close_tag, start)
    while close >= 0:
        opening = text.rfind(open_tag, start, close)
        if opening >= 0:
            return opening + len(open_tag), close, close + len(close_tag)
        close = text.find(close_tag, close + len(close_tag))
    return None


def parse_teacher_output(text: str, *, grader: Grader | None = None) -> TeacherPair | Rejection:
    """The first complete <question>...</question> and the first <answer>...</answer> after it,
    validated (PAPER.md, rejection sampling): both tags, a non-empty question, a \\boxed{} answer
    that math-verify can parse (in the pool, under the deadline)."""
    if len(text) > MAX_TEACHER_CHARS:
        return Rejection("too_long")
    q = _first_pair(text, "<question>", "</question>")
    a = _first_pair(text, "<answer>", "</answer>", q[2]) if q else None
    if q is None or a is None:
        return Rejection("missing_tags")
    question = text[q[0] : q[1]].strip()
    raw = text[a[0] : a[1]].strip()
    if not question:
        return Rejection("empty_question")
    boxes = boxed_contents(raw)
    if not boxes or not boxes[-1]:
        return Rejection("no_boxed")
    answer = boxes[-1]
    if not (grader or default_grader()).parses(answer):
        return Rejection("unparsable_answer")
    return TeacherPair(question, answer, raw)

