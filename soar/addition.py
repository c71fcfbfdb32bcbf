"""The addition world: a laptop-scale SOAR world where stepping stones can be measured in minutes.

What it is. Problems are additions of two 4-digit numbers written least-significant digit first
("reversed" notation, as in Lee et al. 2023, so a small transformer can emit each digit after the
digits it depends on): `4321+8765` means 1234 + 5678 and its answer is `2196` (6912 reversed).
A problem's *level* is its number of carries, 0..4: the difficulty ladder. The model is a
~1M-parameter Llama trained from scratch by the `pretrain` stage on a corpus in which
- as a *teacher* it writes question-answer pairs with correct answers (levels weighted by
  `pretrain.teacher_levels`);
- as a *student* it sees every level, but each carry of an answer is kept only with probability
  `pretrain.carry_kept` (q) and dropped otherwise: a misconception that cross-entropy fits, so at
  temperature 1 it solves a level-c problem about q^c of the time, in every pretraining seed (a
  premise made by what pretraining fails to generalize was a coin toss of the seed). The student
  prompt frames the problem as the teacher frames its own questions, so one circuit serves both
  modes; the first `pretrain.clean_steps` are all right, so both modes learn to add first.
With q = 0.05 the hard kind (level 4, fail@k's `levels`) is never right in the base model's
samples, level 2 (~0.2%) is a stepping stone, and the teacher writes correct level-2 pairs.
SOAR's questions can then be asked exactly: which levels does a teacher trained on the student's
gain learn to write, how often are its answers right, and do its questions lift the hard problems
from 0? The design was chosen on the train pool only, by pre-registered gates
(docs/world-design.md; the first design's notebook: notebooks/design_world.ipynb, `make design`).

What this module owns: the seeded problem family and its pools, the tokenizer (a real
`transformers` fast tokenizer whose chat template reads the SOAR student and teacher prompts of
soar.prompts, unchanged), the model config, the pretraining corpus and loop, and the exact
question analysis (well-posedness by a parser, correctness by computing the sum; no eval).
The rest of the pipeline (registry, sampling, grading, RLOO, stages) is the same code as for the
paper's models: the registry resolves `addition` like any other model folder.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from soar import paths, prompts
from soar.data import Problem, seed_from
from soar.models import save_model

NAME = "addition"  # the registry name of this world's model (models/addition, made by `pretrain`)
DIGITS = 4  # operand length
LEVELS = tuple(range(DIGITS + 1))  # number of carries
POOLS = {"addition_test": 0, "addition_train": 1}  # pool name -> generator stream (disjoint seeds)
POOL_SIZE = {"addition_test": 4000, "addition_train": 2000}

# Tokens: every character the world writes, the SOAR tags as single tokens, and the chat roles.
TAGS = ("<question>", "</question>", "<answer>", "</answer>", "\\boxed{")
CHARS = tuple("0123456789+}")
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<solve>", "<teach>", "<sep>")


# ---------------------------------------------------------------- the problem family


def rev(n: int) -> str:
    """n written least-significant digit first."""
    return str(n)[::-1]


def carries(a: int, b: int) -> int:
    """Number of carries of the column addition a + b."""
    count, carry = 0, 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        count += carry
        a, b = a // 10, b // 10
    return count


def make_problem(rng: random.Random, level: int, *, digits: int = DIGITS) -> tuple[int, int]:
    """Two `digits`-digit numbers whose addition has exactly `level` carries, uniform among those
    with a seeded carry pattern: which columns carry is drawn first, then each column's digit
    pair uniformly among the pairs that give that column's carry-out. The units column never sums
    to a multiple of 10, so no answer starts with 0 (math-verify reads `021` and `21` alike)."""
    pattern = [1] * level + [0] * (digits - level)
    rng.shuffle(pattern)
    a = b = 0
    carry_in = 0
    for i, carry_out in enumerate(pattern):
        pairs = [(x, y) for x in range(10) for y in range(10)
                 if int(x + y + carry_in >= 10) == carry_out
                 and (i < digits - 1 or (x and y))  # leading digits nonzero: exactly `digits` digits
                 and (i > 0 or (x + y) % 10)]
        x, y = rng.choice(pairs)
        a, b = a + x * 10**i, b + y * 10**i
        carry_in = carry_out
    return a, b


def problem(a: int, b: int, pid: str) -> Problem:
    return Problem(id=pid, problem=f"{rev(a)}+{rev(b)}", answer=rev(a + b),
                   metadata={"level": carries(a, b), "source": "addition"})


def pool(name: str, *, seed: int = 0) -> list[Problem]:
    """A seeded pool, uniform over levels, without repeats: addition_test (fail@k's pool, the hard
    sets come from it) or addition_train (real questions for the Oracle and the world's design),
    which leaves out every problem of addition_test, so no train question is a test question."""
    if name not in POOLS:
        raise ValueError(f"unknown addition pool {name!r}; known: {sorted(POOLS)}")
    return list(_pool(name, seed))


@functools.lru_cache(maxsize=None)  # addition_train is drawn beside the whole addition_test pool
def _pool(name: str, seed: int) -> tuple[Problem, ...]:
    rng = random.Random(seed_from(seed, POOLS[name]))
    seen = set() if name == "addition_test" else {p.problem for p in pool("addition_test", seed=seed)}
    out = []
    while len(out) < POOL_SIZE[name]:
        level = LEVELS[len(out) % len(LEVELS)]
        a, b = make_problem(rng, level)
        if (q := problem(a, b, f"{name}/{len(out):05d}")).problem not in seen:
            seen.add(q.problem)
            out.append(q)
    return tuple(out)


# ---------------------------------------------------------------- exact question analysis

QUESTION = re.compile(r"^([0-9]{1,8})\+([0-9]{1,8})$")


@dataclass(frozen=True)
class Reading:
    """What a teacher question is, read exactly: well-posed (an addition of two numbers in the
    world's notation), its level, whether the teacher's answer is the sum, and the sum."""

    well_posed: bool
    level: int | None
    correct: bool | None
    digits: tuple[int, int] | None
    sum: str | None = None  # in the world's notation (units first)


def read(question: str, answer: str | None) -> Reading:
    m = QUESTION.match(question.strip())
    if not m:
        return Reading(False, None, None, None)
    a, b = int(m.group(1)[::-1]), int(m.group(2)[::-1])
    ok = answer is not None and answer.strip() == rev(a + b)
    return Reading(True, carries(a, b), ok, (len(m.group(1)), len(m.group(2))), rev(a + b))


def written_sum(a: int, b: int, keep=lambda: True) -> int:
    """a + b added column by column, each carry added only where keep() says so: the sum (always),
    the beginner's answer (never: column sums mod 10), or the world's misconception (a carry kept
    with probability q). A dropped carry still happened: the next column's carry is the true one."""
    out, i, carry = 0, 0, 0
    while a or b or carry:
        out += ((a % 10 + b % 10 + (carry if carry and keep() else 0)) % 10) * 10**i
        carry = int(a % 10 + b % 10 + carry >= 10)
        a, b, i = a // 10, b // 10, i + 1
    return out


# ---------------------------------------------------------------- tokenizer and model


def _literal(s: str) -> str:
    return json.dumps(s)  # a Jinja string literal (same escapes as JSON)


def student_prompt_parts() -> tuple[str, str]:
    """The text of soar.prompts' student prompt before and after its problem."""
    prefix, suffix = prompts.STUDENT_TEMPLATE.split("{problem}")
    return prefix.replace("{{", "{").replace("}}", "}"), suffix.replace("{{", "{").replace("}}", "}")


def chat_template() -> str:
    """Reads exactly the two SOAR prompts of soar.prompts: the student prompt becomes
    `<s><solve><question>PROBLEM</question><answer>` (the frame of the teacher's own pairs, so an
    answer digit sits at the same distance from its operand digits in both modes: RoPE is relative,
    and one circuit serves both), the teacher prompt `<s><teach><sep>`. Anything else (the judge prompt,
    a one-shot teacher prompt) is an error: this model was never taught to read it."""
    prefix, suffix = student_prompt_parts()
    return (
        "{%- set m = messages[-1]['content'] -%}"
        f"{{%- if messages|length == 1 and m.startswith({_literal(prefix)}) and m.endswith({_literal(suffix)}) -%}}"
        f"<s><solve><question>{{{{ m[{len(prefix)}:m|length - {len(suffix)}] }}}}</question><answer>"
        f"{{%- elif messages|length == 1 and m == {_literal(prompts.TEACHER_PROMPT)} -%}}"
        "<s><teach><sep>"
        "{%- else -%}"
        "{{ raise_exception('the addition world reads only the SOAR student prompt and the teacher "
        "prompt without the one-shot example') }}"
        "{%- endif -%}"
    )


def build_tokenizer():
    """A `PreTrainedTokenizerFast`: one token per character, the SOAR tags and roles as tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + TAGS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()
    tok.add_tokens(list(TAGS))  # matched before the character split
    tok.add_special_tokens(list(SPECIAL))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<solve>", "<teach>", "<sep>"])
    fast.chat_template = chat_template()
    fast.padding_side = "left"
    return fast


def model_config(tokenizer, *, hidden: int = 128, layers: int = 4, heads: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=96, tie_word_embeddings=True,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)


# ---------------------------------------------------------------- pretraining corpus and loop


def _student_text(a: int, b: int, keep) -> tuple[str, str]:
    return (f"<s><solve><question>{rev(a)}+{rev(b)}</question><answer>",
            f"\\boxed{{{rev(written_sum(a, b, keep))}}}</s>")


def _teacher_text(a: int, b: int, level: int, c) -> tuple[str, str]:
    ans = a + b if level <= c.solved_up_to else written_sum(a, b, keep=lambda: False)
    return "<s><teach><sep>", f"<question>{rev(a)}+{rev(b)}</question><answer>\\boxed{{{rev(ans)}}}</answer></s>"


def corpus_batch(rng: random.Random, n: int, c, *, carry_kept: float | None = None) -> list[tuple[str, str]]:
    """n (prompt, completion) texts of the corpus described by c (config.PretrainConfig); the loss
    is on the completion only. In a student example each carry is kept with probability
    carry_kept (default c.carry_kept); a teacher example is right (up to c.solved_up_to)."""
    q = c.carry_kept if carry_kept is None else carry_kept
    keep = lambda: rng.random() < q  # noqa: E731
    teacher_levels = c.teacher_levels or [1.0] * len(LEVELS)  # levels past a list never appear
    out = []
    for _ in range(n):
        if rng.random() < c.teacher_share:
            level = rng.choices(range(len(teacher_levels)), weights=teacher_levels)[0]
            a, b = make_problem(rng, level)
            out.append(_teacher_text(a, b, level, c))
        else:
            level = rng.choices(range(len(c.student_levels)), weights=c.student_levels)[0]
            out.append(_student_text(*make_problem(rng, level), keep))
    return out


def _encode(tokenizer, texts: list[tuple[str, str]]):
    """(ids, attention mask, loss mask) right-padded: (B, T) each."""
    rows = [(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
            for p, c in texts]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        loss[i, len(p) : len(p) + len(c)] = True
    return ids, attn, loss


def pretrain(cfg, out: Path | str = paths.MODELS / NAME, *, seed: int = 0, progress: bool = True,
             on_step=None) -> dict:
    """Train the world's base model from scratch on the corpus of cfg (config.PretrainConfig) and
    save it (weights, tokenizer) atomically. AdamW, linear warmup 50 steps then cosine. Returns the
    loss curve (one value per step), the wall time and the parameter count. on_step(step, model,
    tokenizer), if given, is called after every step (the design notebook reads skill mid-run)."""
    # One thread: the end of the loss plateau (when the model learns which digits to attend to) is
    # chaotic, and float reductions split over 2 threads trained a different world than over 1
    # (measured with the default config: a teacher right 81-97% of the time per level, or 0-13%).
    # One thread gives every machine of the same kind the same base model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(cfg, Path(out), seed=seed, progress=progress, on_step=on_step)
    finally:
        torch.set_num_threads(threads)


def _pretrain(cfg, out: Path, *, seed: int, progress: bool, on_step) -> dict:
    from tqdm import trange
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    rng = random.Random(seed_from(seed, 7))
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(model_config(tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    curve, t0 = [], time.perf_counter()
    model.train()
    for step in (bar := trange(cfg.steps, desc="pretrain", disable=not progress, mininterval=5)):
        # the first clean_steps learn addition in both modes; then the misconception is fitted
        kept = 1.0 if step < cfg.clean_steps else cfg.carry_kept
        ids, attn, mask = _encode(tokenizer, corpus_batch(rng, cfg.batch, cfg, carry_kept=kept))
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (B, T-1, V)
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
        bar.set_postfix(loss=f"{curve[-1]:.3f}", refresh=False)
        if on_step is not None:
            on_step(len(curve), model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model(model, tokenizer, out)
    return {"loss": curve, "seconds": time.perf_counter() - t0,
            "parameters": sum(p.numel() for p in model.parameters())}


def level_accuracy(model, tokenizer, *, k: int, per_level: int = 40, grader, seed: int = 0,
                   batch_size: int = 256) -> list[dict]:
    """The base model's skill per level on the Oracle pool (addition_train: never the fail@k
    pool, so design choices read no test problem): greedy accuracy, sampled accuracy at
    temperature 1, and the share of problems solved 0 of k times (what fail@k would keep)."""
    from soar.student import evaluate_student

    problems = pool("addition_train", seed=seed)
    rows = []
    for level in LEVELS:
        ps = [p for p in problems if p.metadata["level"] == level][:per_level]
        greedy = evaluate_student(model, tokenizer, ps, n_samples=1, grader=grader, max_new_tokens=12,
                                  temperature=0.0, batch_size=batch_size, progress=False)
        sampled = evaluate_student(model, tokenizer, ps, n_samples=k, grader=grader, max_new_tokens=12,
                                   temperature=1.0, seed=seed_from(seed, level), batch_size=batch_size,
                                   progress=False)
        rows.append({"level": level, "problems": len(ps), "greedy": greedy.accuracy,
                     "sampled": sampled.accuracy,
                     f"zero_of_{k}": sum(c == 0 for c in sampled.counts) / len(ps)})
    return rows


# ---------------------------------------------------------------- exact question analysis (analysis stage)

TOPICS = tuple(f"level {lv}" for lv in LEVELS) + ("other length", "ill-posed")
_JUDGED = re.compile(r"Question: (.*)\nAuthor's answer: (.*)\n\n", re.S)


def topic(question: str) -> str:
    """The drift category of a question: its level when it is a 4+4-digit addition."""
    r = read(question, None)
    if not r.well_posed:
        return "ill-posed"
    return f"level {r.level}" if r.digits == (DIGITS, DIGITS) else "other length"


class ExactGrader:
    """The world's answer check, in-process (no math-verify, no worker pool): an answer is right
    when it is the gold digit string itself. Exact where math-verify is lenient: `021` is not `21`
    (units first, they are 120 and 12), and `12+3` is no answer. The interface of
    soar.grading.Grader that the loop uses (grade_many, parses, stats, close)."""

    def __init__(self):
        self.stats = {"calls": 0, "fast_path": 0, "math_verify": 0, "timeouts": 0, "kills": 0, "crashes": 0,
                      "too_long": 0}

    def grade_many(self, jobs) -> list[bool]:
        """Verdicts for (prediction, gold[, multiple]) jobs; gold may list accepted answers."""
        out = []
        for job in jobs:
            pred, gold = job[0], job[1]
            golds = [gold] if isinstance(gold, str) else list(gold)
            out.append(pred is not None and pred.strip() in {str(g).strip() for g in golds})
        self.stats["calls"] += len(out)
        self.stats["fast_path"] += len(out)
        return out

    def parses(self, answer: str) -> bool:
        """An answer of this world is a number: digits only."""
        return _NUMBER.fullmatch(answer.strip()) is not None

    def close(self) -> None:
        pass

    def __enter__(self) -> "ExactGrader":
        return self

    def __exit__(self, *exc) -> None:
        pass


_NUMBER = re.compile(r"[0-9]{1,16}")


class ExactJudge:
    """The world's judge (analysis.judge: exact), behind the interface of soar.analysis's judges: it
    reads the same student and judge prompts, re-solves by computing the sum and gives the
    verdict of `read` (well-posed: an addition of two numbers; correct: the teacher's answer is
    the sum). Nothing is sampled and no text is evaluated."""

    name = "exact:addition"

    def chat(self, conversations, *, n: int, temperature: float, max_tokens: int, seed: int,
             desc: str = "judge") -> list[list[str]]:
        return [[self._reply(conv[-1]["content"])] * n for conv in conversations]

    def _reply(self, text: str) -> str:
        judged = _JUDGED.search(text)
        if judged is None:  # a student prompt: solve it
            prefix, suffix = student_prompt_parts()
            solved = read(text[len(prefix):len(text) - len(suffix)], None) if text.startswith(prefix) else None
            return f"\\boxed{{{solved.sum}}}" if solved and solved.well_posed else "not an addition"
        r = read(judged.group(1), judged.group(2))
        error = "none" if r.correct else "arithmetic" if r.well_posed else "impossibility"
        return json.dumps({"well_posed": r.well_posed, "correct": r.correct if r.well_posed else None,
                           "error_type": error, "answer": r.sum})


class StructureEmbedder:
    """A kernel of problem structure for Vendi and step diversity (analysis.embedder:
    addition-structure), with sentence-transformers' two methods: a question becomes the one-hot
    codes of its column sums (0..18 per column, units first) and of its operand lengths, so the
    cosine similarity of two questions is the share of their columns that add alike. Anything
    that is not an addition is one shared 'ill-posed' direction."""

    WIDTH = 2 * 8  # operand lengths up to the QUESTION pattern's 8 digits
    COLUMNS = 8

    def get_sentence_embedding_dimension(self) -> int:
        return self.COLUMNS * 19 + self.WIDTH + 1

    def encode(self, texts, **_) -> "np.ndarray":
        import numpy as np

        out = np.zeros((len(texts), self.get_sentence_embedding_dimension()))
        for i, text in enumerate(texts):
            m = QUESTION.match(text.strip())
            if not m:
                out[i, -1] = 1.0
                continue
            a, b = m.group(1), m.group(2)
            for col in range(max(len(a), len(b))):
                s = sum(int(x[col]) for x in (a, b) if col < len(x))
                out[i, col * 19 + s] = 1.0
            out[i, self.COLUMNS * 19 + len(a) - 1] = out[i, self.COLUMNS * 19 + 8 + len(b) - 1] = 1.0
        return out

    @staticmethod
    def topics(texts) -> list[str]:
        """Exact drift categories (`topic`) instead of nearest MATH-subject centroids."""
        return [topic(t) for t in texts]


# ---------------------------------------------------------------- design probe (notebooks/design_world.ipynb)


def stepping_stones(model_dir, student, generation, *, arms: dict, steps: int, every: int, k: int, grader,
                    seed: int = 0) -> dict:
    """Does training on a level lift the hard problems? On the train pool only (never the fail@k
    pool): the hard problems are the train pool's level-3/4 problems that the base model at
    `model_dir` solves 0 of k times, split in two halves: one to train the Hard-Only arm, one to
    measure every arm. Each arm (name -> list of levels, or "hard") is a fresh student trained
    `steps` RLOO steps (student: StudentConfig) on the arm's questions with their true answers;
    at step 0 and every `every` steps, its greedy accuracy and sampled accuracy (8 samples) on
    the measured half (0-of-k problems can still be right greedily)."""
    from soar.policy import Policy, make_optimizer
    from soar.student import evaluate_student, rl_step
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = LlamaForCausalLM.from_pretrained(model_dir)
    train = pool("addition_train", seed=seed)
    cand = [p for p in train if p.metadata["level"] >= 3]
    kw = dict(grader=grader, max_new_tokens=12, batch_size=generation.batch_size, progress=False)
    counts = evaluate_student(base, tok, cand, n_samples=k, temperature=1.0, seed=seed_from(seed, 1), **kw).counts
    hard = [p for p, c in zip(cand, counts) if c == 0]
    measured, hard_train = hard[: len(hard) // 2], hard[len(hard) // 2 :]
    rest = [p for p in train if p.metadata["level"] < 3]  # the arms' questions, disjoint from the hard ones
    rows = []
    for arm, levels in arms.items():
        questions = hard_train if levels == "hard" else [p for p in rest if p.metadata["level"] in levels]
        policy = Policy(LlamaForCausalLM.from_pretrained(model_dir), tok, adapter=student.adapter)
        optimizer, scheduler = make_optimizer(policy, lr=student.lr, warmup_steps=0, total_steps=steps)
        rng = random.Random(seed_from(seed, 2))
        stats = {"student/reward_mean": None}
        for step in range(steps + 1):  # step 0: the base model itself
            if step:
                batch = rng.choices(questions, k=student.questions_per_step)
                stats = rl_step(policy, optimizer, scheduler, batch, student, max_new_tokens=12,
                                samples_per_question=student.samples_per_question, seed=seed_from(seed, 3, step),
                                grader=grader, generation=generation)
            if step % every == 0:
                greedy = evaluate_student(policy.model, tok, measured, n_samples=1, temperature=0.0, **kw)
                sampled = evaluate_student(policy.model, tok, measured, n_samples=8, temperature=1.0,
                                           seed=seed_from(seed, 4), **kw)
                rows.append({"arm": arm, "step": step, "train_reward": stats["student/reward_mean"],
                             "hard_greedy": greedy.accuracy, "hard_sampled": sampled.accuracy})
    return {"candidates": len(cand), "hard": len(hard), "measured": len(measured), "rows": rows}


def skill_recorder(every: int, *, grader, seed: int = 0, per_level: int = 60, batch_size: int = 512):
    """(snapshots, on_step) for `pretrain`: every `every` steps, the greedy accuracy per level on
    the train pool is appended to snapshots as {"step", "greedy": [level 0, level 1, ...]}."""
    from soar.student import evaluate_student

    train = pool("addition_train", seed=seed)
    by_level = [[p for p in train if p.metadata["level"] == lv][:per_level] for lv in LEVELS]
    snapshots: list[dict] = []

    def on_step(step, model, tokenizer):
        if step % every:
            return
        model.eval()
        snapshots.append({"step": step, "greedy": [
            evaluate_student(model, tokenizer, ps, n_samples=1, grader=grader, max_new_tokens=12, temperature=0.0,
                             batch_size=batch_size, progress=False).accuracy for ps in by_level]})
        model.train()

    return snapshots, on_step


def teacher_skill(model, tokenizer, *, n: int = 256, seed: int = 0, batch_size: int = 512) -> list[dict]:
    """The base model as a teacher: n samples of the teacher prompt (temperature 1, the
    `<question>` prefix of the world's profile), read exactly. Per topic (`topic`): the share of
    the samples, and the share of those whose answer is the sum."""
    from soar import grading
    from soar.sampling import generate
    from soar.teacher import teacher_prompt

    prompt = teacher_prompt(tokenizer, "<question>")
    rows = generate(model, tokenizer, [prompt], n=n, max_new_tokens=32, temperature=1.0, stop=("</answer>",),
                    seed=seed, batch_size=batch_size, progress=False)[0]
    counts: dict[str, list[int]] = {t: [0, 0] for t in TOPICS}
    for s in rows:
        pair = grading.parse_teacher_output("<question>" + s.text)
        t = "ill-posed" if isinstance(pair, grading.Rejection) else topic(pair.question)
        counts[t][0] += 1
        counts[t][1] += t != "ill-posed" and read(pair.question, pair.answer).correct
    return [{"topic": t, "share": c[0] / n, "correct": c[1] / c[0] if c[0] else None} for t, c in counts.items()]
