"""soar.grading, table-driven: every case says why it is there (the id is the reason).

Equivalence (true and false), answer lists, extraction, hostile text, deadlines and worker
recovery, the shaped student reward, teacher-output parsing. The policy these pin down is written
in the module docstring of soar/grading.py.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soar import grading
from soar.grading import Grader, Rejection, TeacherPair

ROOT = Path(__file__).resolve().parents[1]


def _ids(cases):
    return [c[-1] for c in cases]


# ---------------------------------------------------------------- equivalence

EQUIVALENT = [
    # (prediction, gold, why)
    ("3,\\!200", "3200", "MATH thousands separator with a negative thin space"),
    ("1,000", "1000", "comma + three digits in a pure number is a thousands separator"),
    ("1{,}000", "1000", "braced thousands separator"),
    ("1,000,000", "10^6", "several separators, against a power"),
    ("10 000", "10000", "space-grouped thousands"),
    ("\\$1,234.50", "1234.5", "GSM8K money with separator and trailing zero"),
    ("70,000", "70000", "GSM8K plain number with separator"),
    ("0.5", "\\frac12", "decimal vs fraction without braces"),
    (".5", "1/2", "leading-dot decimal vs slash fraction"),
    ("\\frac{3}{4}", "0.75", "fraction vs terminating decimal"),
    ("0.25", "\\frac{1}{2^2}", "decimal vs fraction with a power, exact"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", "dfrac is frac"),
    ("\\tfrac{1}{2}", "0.5", "tfrac is frac"),
    ("\\frac{10}{4}", "\\frac52", "unreduced fraction"),
    ("-\\frac12", "\\frac{-1}{2}", "sign inside or outside the fraction"),
    ("2\\frac{1}{2}", "5/2", "mixed number"),
    ("-2\\frac{1}{2}", "-\\frac{5}{2}", "negative mixed number"),
    ("3", "3.0", "integer vs decimal"),
    ("6", "6.000", "trailing zeros"),
    ("0", "-0", "signed zero"),
    ("5 \\text{ cm}", "5", "text unit"),
    ("5\\text{cm}^2", "5", "text unit with a power"),
    ("\\text{5 cm}", "5", "number and unit inside one text"),
    ("4", "4 \\text{ apples}", "unit on the gold side"),
    ("18 dollars", "18", "unit word"),
    ("\\$18", "18", "escaped dollar sign"),
    ("\\$18.00", "18", "dollars and cents"),
    ("3.25\\text{ dollars}", "3.25", "MATH gold with a text unit"),
    ("\\$7.50", "7.5", "MATH gold with a dollar sign"),
    ("50\\%", "50", "percent sign is dropped"),
    ("50 percent", "50", "percent word is dropped"),
    ("30^\\circ", "30", "degrees"),
    ("30^{\\circ}", "30", "braced degrees"),
    ("30°", "30", "unicode degree sign"),
    ("$\\frac{1}{2}$", "\\frac{1}{2}", "math delimiters around the answer"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", "left/right delimiters in a tuple"),
    ("(3,5)", "(3,5)", "same ordered pair"),
    ("5, 3", "3, 5", "bare lists are unordered"),
    ("\\{1,2\\}", "\\{2,1\\}", "sets are unordered"),
    ("(1,2),(3,4)", "(3,4),(1,2)", "a list of pairs in another order"),
    ("(-\\infty, 3]", "(-\\infty,3]", "half-open infinite interval"),
    ("x<3", "(-\\infty,3)", "inequality against its interval"),
    ("x \\in [1,2]", "[1,2]", "membership against the interval"),
    ("\\pm 2", "2,-2", "plus-minus is both values"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt2, 1-\\sqrt2", "plus-minus with a surd"),
    ("x=5", "5", "assignment form of the answer"),
    ("5", "x=5", "assignment form of the gold"),
    ("y=2x+3", "2x+3", "equation of the answer's expression"),
    ("\\sqrt{8}", "2\\sqrt2", "simplified surd"),
    ("\\sqrt{9800}", "70\\sqrt2", "MATH-style surd"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt3}", "rationalized denominator"),
    ("(x+1)^2", "x^2+2x+1", "expanded polynomial"),
    ("0.5x", "\\frac{x}{2}", "decimal coefficient read exactly"),
    ("\\sin^2 x + \\cos^2 x", "1", "trig identity"),
    ("1+i", "i+1", "complex number, reordered"),
    ("\\infty", "\\infty", "infinity"),
    ("\\emptyset", "\\varnothing", "two spellings of the empty set"),
    ("\\text{Monday}", "Monday", "text answer"),
    ("\\text{(A)}", "A", "multiple-choice letter"),
    ("(B)", "\\text{(B)}", "choice in parentheses"),
    ("1011_2", "1011_{2}", "base subscript with and without braces"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "matrix, spacing around \\\\"),
    ("100000000000000000000", "10^{20}", "big integer against a power, exactly"),
    # radicals written as fractional powers
    ("2^{1/2}", "\\sqrt{2}", "square root as the power 1/2"),
    ("8^{1/3}", "2", "a cube root that is an integer"),
    ("2^\\frac12", "\\sqrt2", "unbraced \\frac exponent (math-verify reads only braced ones)"),
    ("3^\\frac{1}{3}", "\\sqrt[3]{3}", "unbraced \\frac{}{} exponent against an nth root"),
    ("12^{1/2}", "2\\sqrt{3}", "fractional power against the simplified surd"),
    ("2^{-1/2}", "\\frac{\\sqrt{2}}{2}", "negative fractional power against a rationalized surd"),
    ("\\sqrt[3]{-8}", "-2", "odd root of a negative number is the real root (MATH), not sympy's complex one"),
    ("(-8)^{2/3}", "4", "real odd root, then squared"),
    ("(-27)^{1/3}", "-3", "negative base written as a fractional power"),
    ("\\sqrt[3]{-2}", "-\\sqrt[3]{2}", "real cube root of a negative non-cube"),
    # thousands separators inside a list
    ("1,000, 2,500", "2500, 1000", "comma + space separates items, the tight commas group digits"),
    ("\\{1,000, 2,500\\}", "\\{1000, 2500\\}", "grouped numbers inside a set"),
    ("1{,}000, 2{,}500", "1000, 2500", "braced separators in a spaced list"),
    ("1{,}000,2{,}500", "1000, 2500", "{,} before three digits is a separator even in a tight list"),
    ("1,234,567, 8", "8, 1234567", "several groups in one item"),
    ("(1,000, 2,000)", "(1000, 2000)", "grouped numbers inside an ordered pair"),
]

NOT_EQUIVALENT = [
    ("100000000000000000001", "100000000000000000000", "big integers compare exactly"),
    ("10^{20}+1", "10^{20}", "no float false positive on big expressions"),
    ("2^{100}+1", "2^{100}", "exact powers of two"),
    ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}", "tiny numbers are not all equal to zero"),
    ("100000000000000000000.5", "100000000000000000000", "a decimal far beyond float precision"),
    ("0.333", "\\frac{1}{3}", "a rounded decimal is not the fraction"),
    ("0.333333", "\\frac13", "decimals are exact: six 3s are still not a third"),
    ("1.414214", "\\sqrt2", "a decimal approximation of an irrational is not exact"),
    ("\\pi", "3.14", "pi is not 3.14"),
    ("50\\%", "0.5", "percent sign is dropped, not divided by 100"),
    ("2\\frac{1}{2}", "1", "a mixed number is not a product"),
    ("2m", "2", "a one-letter unit-like symbol is a variable"),
    ("2t", "2", "another one-letter unit of math-verify's list"),
    ("1,2", "12", "comma + one digit separates items"),
    ("12,34", "1234", "comma + two digits is not a thousands separator"),
    ("1,000", "(1,0)", "policy: 1,000 is a thousand, not a pair"),
    ("(3,5)", "(5,3)", "ordered tuples keep order"),
    ("[1,2)", "[1,2]", "half-open vs closed interval"),
    ("(1,2)", "(1,2]", "open vs half-open interval"),
    ("2", "\\pm 2", "one root of two"),
    ("3, 5", "3", "a hedged list is not the answer"),
    ("-5", "5", "sign matters"),
    ("q-p", "p - q", "antisymmetric expression"),
    ("x^2", "x^3", "different powers"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", "matrix entries in order"),
    ("\\text{even}", "\\text{odd}", "different words"),
    ("B", "\\text{(A)}", "different choice"),
    ("\\frac{1}{0}", "1", "division by zero is not a number"),
    ("7", "8", "plainly wrong"),
    ("\\$", "\\%", "decorations alone are not answers"),
    ("", "8", "empty prediction"),
    (None, "8", "no answer extracted"),
    ("8", "", "empty gold never matches"),
    ("2^{1/2}", "\\sqrt{3}", "a fractional power of another number"),
    ("8^{1/3}", "3", "a cube root is not any integer"),
    ("(-4)^{1/2}", "2", "an even root of a negative number stays imaginary"),
    ("1,000,2,000", "1000, 2000", "a tight list is ambiguous: its commas separate four items"),
    ("1,2, 3,000", "1, 2, 3000", "bare commas also separate items here, so 3,000 stays two items"),
    ("3{,}14", "3.14", "{,} before two digits is not a thousands separator (nor a decimal point)"),
]


@pytest.mark.parametrize("pred, gold, why", EQUIVALENT, ids=_ids(EQUIVALENT))
def test_equivalent(grader, pred, gold, why):
    assert grader.is_correct(pred, gold) is True


@pytest.mark.parametrize("pred, gold, why", NOT_EQUIVALENT, ids=_ids(NOT_EQUIVALENT))
def test_not_equivalent(grader, pred, gold, why):
    assert grader.is_correct(pred, gold) is False


ANSWER_LISTS = [
    # (prediction, gold, multiple, expected, why)
    ("6", ["5", "6"], False, True, "answer_list: any accepted answer suffices"),
    ("7", ["5", "6"], False, False, "answer_list: none matches"),
    ("5, 6", ["5", "6"], False, False, "answer_list: listing every alternative is hedging"),
    ("3, 5", ["5", "3"], True, True, "multiple: every part, any order"),
    ("5 ; 3", ["3", "5"], True, True, "multiple: semicolon separator"),
    ("3", ["5", "3"], True, False, "multiple: a missing part"),
    ("3, 5, 7", ["5", "3"], True, False, "multiple: an extra part"),
    ("3, 3", ["5", "3"], True, False, "multiple: each gold part exactly once"),
    ("3, 5, 5", ["5", "3"], True, False, "multiple: a repeated part is an extra part, not a set"),
    ("\\pm 2", ["2", "-2"], True, True, "multiple: plus-minus covers both parts"),
    ("84, 69", "$69$,$84$", True, True, "multiple: OlympiadBench gold string with dollars"),
    ("(3,4), (1,2)", "$(1,2),(3,4)$", True, True, "multiple: tuples in any order"),
    ("(2,1), (3,4)", "$(1,2),(3,4)$", True, False, "multiple: order inside a tuple matters"),
    ("1,000, 2,000", ["2000", "1000"], True, True, "multiple: thousands separators inside a list"),
]


@pytest.mark.parametrize("pred, gold, multiple, expected, why", ANSWER_LISTS, ids=_ids(ANSWER_LISTS))
def test_answer_lists(grader, pred, gold, multiple, expected, why):
    assert grader.is_correct(pred, gold, multiple=multiple) is expected


SPLITS = [
    ("(1,2), 3", ["(1,2)", "3"], "brackets protect their commas"),
    ("1,000, 2", ["1,000", "2"], "a thousands separator stays inside its number"),
    ("1,2,3", ["1", "2", "3"], "one-digit groups are items"),
    ("a; b", ["a", "b"], "semicolons separate"),
]


@pytest.mark.parametrize("text, parts, why", SPLITS, ids=_ids(SPLITS))
def test_split_answers(text, parts, why):
    assert grading.split_answers(text) == parts


def test_module_level_is_correct_and_grade_completions():
    assert grading.is_correct("\\frac{1}{2}", "0.5") is True
    assert grading.is_correct("\\sqrt{8}", "2\\sqrt{2}", timeout=3.0) is True
    assert grading.is_correct("3, 5", ["5", "3"], multiple=True) is True
    got = grading.grade_completions(["so \\boxed{4}", "\\boxed{5}", "the answer is 4", "\\boxed{6}"],
                                    ["4", "4", "4", ["5", "6"]])
    assert got == [True, False, False, True]  # no box, no credit: fallback is off for grading


def test_fast_path_needs_no_worker():
    with Grader(timeout=5.0, workers=2) as g:
        assert g.is_correct("1,000", "1000") and not g.is_correct("7", "8")
        assert g.is_correct("\\$18.00", "18")
        assert g._pool == [] and g.stats["fast_path"] == 3 and g.stats["math_verify"] == 0


def test_grade_many_parallel_and_counted(grader):
    jobs = [("\\sqrt{8}", "2\\sqrt2"), ("(x+1)^2", "x^2+2x+1"), ("5", "6"), ("1,000", "1000")] * 3
    before = dict(grader.stats)
    assert grader.grade_many(jobs) == [True, True, False, True] * 3
    assert grader.stats["calls"] - before["calls"] == 12
    assert grader.stats["fast_path"] - before["fast_path"] == 6  # 5 vs 6 and 1,000 are decided in-process
    assert grader.stats["math_verify"] - before["math_verify"] == 2  # identical pairs run once


# ---------------------------------------------------------------- extraction

EXTRACT = [
    # (completion, expected, why)
    ("so \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}", "nested braces"),
    ("\\boxed{1} then \\boxed{2}", "2", "the last box wins"),
    ("answer \\boxed 5", "5", "boxed without braces"),
    ("answer \\boxed 5.", "5", "boxed without braces, sentence period"),
    ("\\fbox{7}", "7", "fbox"),
    ("\\boxed {42}", "42", "space before the brace"),
    ("$\\boxed{x^2}$.", "x^2", "box inside math mode"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", "escaped braces are literal"),
    ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right.", "an escaped brace needs no partner"),
    ("\\boxed{\\boxed{3}}", "3", "nested box: the innermost is the last"),
    ("\\boxed{1} and later \\boxed{2", "1", "a truncated last box leaves the last complete one"),
    ("\\boxed{unclosed", None, "unbalanced braces give nothing"),
    ("\\boxed{}", None, "an empty box is no answer"),
    ("no box here", None, "nothing to extract"),
    ("", None, "empty completion"),
]


@pytest.mark.parametrize("text, expected, why", EXTRACT, ids=_ids(EXTRACT))
def test_extract_answer(text, expected, why):
    assert grading.extract_answer(text, fallback=False) == expected


FALLBACK = [
    ("The final answer is 42.", "42", "final answer sentence, period stripped"),
    ("so the answer is $\\frac{1}{2}$.", "\\frac{1}{2}", "dollars stripped"),
    ("THE ANSWER IS: 7", "7", "case-insensitive, colon"),
    ("Thus the answer is 3. Then we check.", "3", "stops at the end of its sentence"),
    ("the answer is 3, no wait, the final answer is 5", "5", "the last statement wins"),
    ("\\boxed{4} although the answer is 5", "4", "a box beats the fallback"),
    ("I think it is 5", None, "no anchor phrase"),
]


@pytest.mark.parametrize("text, expected, why", FALLBACK, ids=_ids(FALLBACK))
def test_extract_answer_fallback(text, expected, why):
    assert grading.extract_answer(text) == expected


def test_fallback_is_optional():
    assert grading.extract_answer("The final answer is: 42.", fallback=False) is None


LINEAR = [
    ("{" * 1_000_000, "a megabyte of open braces"),
    ("\\boxed{" * 150_000, "a megabyte of unclosed boxes"),
    ("\\boxed{1}" * 100_000, "a megabyte of closed boxes"),
    ("the answer is " * 70_000, "a megabyte of fallback anchors"),
    ("}" * 500_000 + "\\boxed{" + "{" * 500_000, "closing braces then an unclosed box"),
]


@pytest.mark.parametrize("text, why", LINEAR, ids=_ids(LINEAR))
def test_extraction_is_linear_time(text, why):
    start = time.perf_counter()
    grading.extract_answer(text)
    assert time.perf_counter() - start < 3.0  # linear: ~0.2 s; a quadratic scan takes minutes


# ---------------------------------------------------------------- hostile text and deadlines


@pytest.fixture(scope="module")
def fast_grader():
    """A short deadline, so that the hostile cases that do time out cost ~2 s each."""
    with Grader(timeout=2.0, workers=2) as g:
        yield g


HOSTILE = [
    ("__import__('os').system('touch {marker}')", "python code"),
    ("exec(\"open('{marker}', 'w').write('x')\")", "python code through exec"),
    ("\\text{__import__('os').system('touch {marker}')}", "python code inside text"),
    ("10^{10^{10^{10}}}", "a tower of exponents"),
    ("\\frac{5^{\\left(5^{\\left(5^{\\left(5^5\\right)}\\right)} - 4\\right)} - 5}{16}", "a known math-verify hang"),
    ("100!!!", "a factorial tower"),
    ("(" * 300 + "1" + ")" * 300, "deep nesting"),
    ("{" * 1_000_000, "a megabyte of braces"),
    ("9" * 100_000, "a 100k-digit number"),
]


@pytest.mark.parametrize("text, why", HOSTILE, ids=_ids(HOSTILE))
def test_hostile_text_is_false_fast_and_never_executed(fast_grader, tmp_path, text, why):
    marker = tmp_path / "PWNED"
    text = text.replace("{marker}", str(marker))
    start = time.perf_counter()
    answer = grading.extract_answer("\\boxed{" + text + "}") or text
    assert fast_grader.is_correct(answer, "1") is False
    assert time.perf_counter() - start < 10
    assert not marker.exists()


def test_long_prediction_is_false_without_parsing():
    with Grader(timeout=5.0) as g:
        long = "1" + "0" * grading.MAX_ANSWER_CHARS
        assert g.is_correct(long, long) is False  # even when equal to the gold: not an answer
        assert g.stats["too_long"] == 1 and g._pool == []


def test_hostile_gold_is_false_without_parsing():
    with Grader(timeout=5.0) as g:
        assert g.is_correct("1", "{" * 1_000_000) is False and g.is_correct("9", "9" * 100_000) is False
        assert g._pool == []


def test_timeout_is_scored_false_and_counted():
    with Grader(timeout=1.0, workers=1) as g:
        start = time.perf_counter()
        assert g.is_correct("10^{10^{10^{10}}}", "1") is False
        assert g.stats["timeouts"] == 1
        assert time.perf_counter() - start < 10  # includes the worker's start
        assert g.is_correct("\\sqrt{8}", "2\\sqrt{2}") is True  # the worker still serves


def test_worker_stuck_past_the_deadline_is_killed_and_replaced():
    # soft_fraction=None: no in-worker alarm, so only the parent's kill can stop the check
    with Grader(timeout=1.0, workers=1, soft_fraction=None) as g:
        assert g.is_correct("\\sqrt{8}", "2\\sqrt{2}") is True
        old = g._pool[0].proc
        start = time.perf_counter()
        assert g.is_correct("3^{3^{17}}", "1") is False
        assert time.perf_counter() - start < 5
        assert g.stats["timeouts"] == 1 and g.stats["kills"] == 1
        assert old.returncode is not None and not Path(f"/proc/{old.pid}").exists()  # reaped
        assert g.is_correct("(x+1)^2", "x^2+2x+1") is True  # a fresh worker took over


def test_worker_killed_from_outside_is_retried():
    with Grader(timeout=5.0, workers=1) as g:
        assert g.is_correct("\\sqrt{8}", "2\\sqrt{2}") is True
        os.kill(g._pool[0].proc.pid, signal.SIGKILL)
        time.sleep(0.2)
        assert g.is_correct("(x+1)^2", "x^2+2x+1") is True  # not a wrong verdict
        assert g.stats["crashes"] == 1


def test_close_reaps_every_worker():
    g = Grader(timeout=5.0, workers=2)
    assert g.is_correct("\\sqrt{8}", "2\\sqrt{2}")
    procs = [w.proc for w in g._pool]
    g.close()
    assert all(p.returncode is not None and not Path(f"/proc/{p.pid}").exists() for p in procs)


def test_script_without_main_guard_works_and_leaves_no_workers(tmp_path):
    # multiprocessing's 'spawn' would re-import this unguarded script in every worker and fail
    script = tmp_path / "grade.py"
    script.write_text("from soar import grading\n"
                      "print(grading.is_correct('\\\\sqrt{8}', '2\\\\sqrt{2}'))\n"
                      "print(*[w.proc.pid for w in grading.default_grader()._pool])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    verdict, pids = out.stdout.splitlines()
    assert verdict == "True"
    time.sleep(0.2)
    assert pids and not any(Path(f"/proc/{pid}").exists() for pid in pids.split())  # atexit shut them down


# ---------------------------------------------------------------- shaped student reward


def test_reward_constants_are_strictly_decreasing():
    values = [grading.REWARD_CORRECT, grading.REWARD_REFERENCE_PRESENT, grading.REWARD_BOXED, grading.REWARD_NONE]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4 and values[-1] == 0.0


REWARDS = [
    # (completion, gold, expected, why)
    ("so \\boxed{4}", "4", grading.REWARD_CORRECT, "boxed and verified"),
    ("so \\boxed{\\frac{8}{2}}", "4", grading.REWARD_CORRECT, "verified by math-verify, not by string"),
    ("so \\boxed{4 \\text{ or } 6}", "4", grading.REWARD_REFERENCE_PRESENT, "reference string appears in the answer"),
    ("so \\boxed{\\frac{1}{2}\\pi}", "\\frac{1}{2}", grading.REWARD_REFERENCE_PRESENT, "LaTeX reference in the answer"),
    ("4 apples, so \\boxed{5}", "4", grading.REWARD_BOXED,
     "PAPER.md: the reference must appear in the answer; a mention elsewhere in the completion pays nothing"),
    ("we get \\frac{1}{2} so \\boxed{2}", "\\frac{1}{2}", grading.REWARD_BOXED, "a LaTeX reference outside the box"),
    ("so \\boxed{14}", "4", grading.REWARD_BOXED, "a digit inside another number is not the reference"),
    ("\\boxed{5}", "4", grading.REWARD_BOXED, "boxed but wrong"),
    ("the answer is 4", "4", grading.REWARD_NONE, "no box, even when right"),
    ("\\boxed{}", "4", grading.REWARD_NONE, "an empty box is no box"),
    ("so \\boxed{6}", ["5", "6"], grading.REWARD_CORRECT, "any accepted answer"),
]


@pytest.mark.parametrize("completion, gold, expected, why", REWARDS, ids=_ids(REWARDS))
def test_student_reward(grader, completion, gold, expected, why):
    assert grading.student_reward(completion, gold, grader=grader) == expected


def test_batched_rewards_equal_single_rewards(grader):
    completions = [c for c, *_ in REWARDS]
    golds = [g for _, g, *_ in REWARDS]
    assert grading.student_rewards(completions, golds, grader=grader) == [r for _, _, r, _ in REWARDS]


def test_hostile_completion_gets_no_reward_and_runs_nothing(fast_grader, tmp_path):
    marker = tmp_path / "PWNED"
    text = f"\\boxed{{__import__('os').system('touch {marker}')}}"
    gold = "31415926"  # not "1": pytest's temp dir pytest-1 put it in the text (reference present)
    assert gold not in text
    assert grading.student_reward(text, gold, grader=fast_grader) == grading.REWARD_BOXED
    assert not marker.exists()


def test_shaped_reward_is_strictly_ordered(grader):
    r = lambda c: grading.student_reward(c, "4", grader=grader)  # noqa: E731
    assert r("\\boxed{4}") > r("\\boxed{4 \\text{ or } 5}") > r("\\boxed{5}") > r("4") == 0.0


# ---------------------------------------------------------------- teacher output (rejection sampling)

VALID = "think first <question>What is 1+1?</question> then <answer>so \\boxed{2}</answer> done"

TEACHER = [
    # (text, reason or None for valid, why)
    (VALID, None, "valid, reasoning outside the tags"),
    ("<question>What is 1+1?</question><answer>\\boxed{2}</answer>"
     "<question>Q2</question><answer>\\boxed{3}</answer>", None, "the first complete pair is used"),
    ("<question>What is 1+1?</question>", "missing_tags", "no answer tag"),
    ("<answer>\\boxed{2}</answer><question>What is 1+1?</question>", "missing_tags", "answer before the question"),
    ("<question>What is 1+1?<answer>\\boxed{2}</answer>", "missing_tags", "unclosed question"),
    ("<question>  </question><answer>\\boxed{2}</answer>", "empty_question", "blank question"),
    ("<question>Q?</question><answer>2</answer>", "no_boxed", "answer without a box"),
    ("<question>Q?</question><answer>\\boxed{}</answer>", "no_boxed", "empty box"),
    ("<question>Q?</question><answer>\\boxed{???}</answer>", "unparsable_answer", "not mathematics"),
    ("<question>Q?</question><answer>\\boxed{\\frac{}{}}</answer>", "unparsable_answer", "empty fraction"),
    ("<question>Q?</question><answer>\\boxed{" + "x" * 2000 + "}</answer>", "unparsable_answer", "over the answer cap"),
    ("<question>" + "a" * 9000 + "</question><answer>\\boxed{2}</answer>", "too_long", "length cap"),
]


@pytest.mark.parametrize("text, reason, why", TEACHER, ids=_ids(TEACHER))
def test_teacher_output_parsing(grader, text, reason, why):
    out = grading.parse_teacher_output(text, grader=grader)
    if reason is None:
        assert out == TeacherPair("What is 1+1?", "2", out.raw_answer)
        assert "\\boxed{2}" in out.raw_answer
    else:
        assert out == Rejection(reason) and reason in grading.REJECTION_REASONS


def test_teacher_pair_fields():
    out = grading.parse_teacher_output(VALID)
    assert isinstance(out, TeacherPair)
    assert (out.question, out.answer, out.raw_answer) == ("What is 1+1?", "2", "so \\boxed{2}")
    with pytest.raises(AttributeError):
        out.answer = "3"  # frozen: a parsed pair is a record


def test_every_rejection_reason_is_reachable():
    reasons = {r for _, r, _ in TEACHER if r is not None}
    assert reasons == set(grading.REJECTION_REASONS)
