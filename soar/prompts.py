"""Prompt templates and the answer contract (PAPER.md: student prompt, teacher output format).

The student prompt is the same for fail@k filtering, the inner loop and evaluation. The teacher
prompt is fixed and carries no seed questions (the paper found seeding made it copy the seeds).
Templates are versioned: a change of wording is a change of PROMPT_VERSION, which keys caches.
"""

from __future__ import annotations

PROMPT_VERSION = "v1"

MATH_SUBJECTS = (
    "Prealgebra",
    "Algebra",
    "Number Theory",
    "Counting & Probability",
    "Geometry",
    "Intermediate Algebra",
    "Precalculus",
)

# The answer contract: the last \boxed{...} in a completion is the answer (soar.grading).
STUDENT_TEMPLATE = (
    "Solve the following math problem step by step. "
    "The last line of your response should be of the form "
    '"The final answer is: $\\boxed{{ANSWER}}$" where ANSWER is the final answer.\n\n'
    "{problem}"
)

TEACHER_PROMPT = (
    "You are a math teacher. Write one original, challenging, multi-step math problem in one of "
    "these subjects: " + ", ".join(MATH_SUBJECTS) + ". "
    "The problem must be self-contained and have a single, exact final answer.\n"
    "You may think first. Then write the problem between <question> and </question> tags, and its "
    "final answer between <answer> and </answer> tags in the form \\boxed{...}, like this:\n"
    "<question>...</question><answer>\\boxed{...}</answer>"
)


# The one-shot example (tiny profile only; the paper's teacher prompt has no seed questions).
TEACHER_EXAMPLE = (
    "<question>A farmer has 12 cows and buys 7 more. How many cows does he have now?</question>"
    "<answer>\\boxed{19}</answer>"
)


def student_messages(problem: str) -> list[dict[str, str]]:
    """Chat messages asking the student to solve `problem` and box the answer."""
    return [{"role": "user", "content": STUDENT_TEMPLATE.format(problem=problem)}]


def teacher_messages(one_shot: bool = False) -> list[dict[str, str]]:
    """Chat messages asking the teacher for one question-answer pair (optionally with an example)."""
    return [{"role": "user", "content": TEACHER_PROMPT + ("\nExample:\n" + TEACHER_EXAMPLE if one_shot else "")}]


# The question judge (soar.analysis; PAPER.md "Question analysis"). Its own version: a change of
# wording invalidates cached verdicts without touching the student and teacher prompts.
JUDGE_VERSION = "judge-v1"
ERROR_TYPES = ("none", "arithmetic", "logic", "impossibility", "ambiguity")

JUDGE_TEMPLATE = (
    "You are checking a math question and the answer its author gave.\n\n"
    "Question: {question}\n"
    "Author's answer: {answer}\n\n"
    "First decide whether the question is well-posed: self-contained, unambiguous, possible, with "
    "exactly one correct final answer. If it is, solve it yourself and decide whether the author's "
    "answer is correct.\n"
    "Reply with one JSON object and nothing else, with these keys:\n"
    '"well_posed": true or false;\n'
    '"correct": true or false, or null when the question is not well-posed;\n'
    '"error_type": one of "none" (well-posed and correct), "arithmetic" (a calculation mistake in '
    'the answer), "logic" (a wrong method or reasoning), "impossibility" (the question cannot be '
    'satisfied as stated), "ambiguity" (more than one reading or answer);\n'
    '"answer": your own verified final answer as a string, or null.\n'
    'A question that is not well-posed gets "impossibility" or "ambiguity"; a well-posed question '
    'with a wrong answer gets "arithmetic" or "logic".'
)


def judge_messages(question: str, answer: str) -> list[dict[str, str]]:
    """Chat messages asking the judge for a JSON verdict on one question-answer pair."""
    return [{"role": "user", "content": JUDGE_TEMPLATE.format(question=question, answer=answer)}]
