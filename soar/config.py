"""Every knob of the pipeline, as frozen dataclasses; `load()` reads params.yaml.

params.yaml is the one source of truth, and is itself the default profile (addition, the laptop
world). Its `profile` key names an overlay in `profiles/<profile>.yaml` (tiny = SmolLM2 on GSM8K,
smoke = CI-sized tiny, paper = PAPER.md Table 3) that is merged on top, so switching profile is one
edit or `dvc exp run -S profile=paper`. A sweep sets the file that holds the value: params.yaml
under the default profile, the overlay otherwise; an edit of params.yaml that the active overlay
would override is an error naming the file to edit (`_refuse_shadowed_edits`).
Unknown keys and wrong types are errors that name the offending key, never silently ignored.
Field docstrings (the string after each field) are the parameter glossary of the README.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


BASE_PROFILE = "addition"  # the profile that is params.yaml itself (the laptop world)


class ConfigError(ValueError):
    """A params file has an unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Base model of teacher and student (one model plays both roles, as in the paper):
    `smollm2-135m-instruct` (embedded), a Hugging Face id or folder, or `random:<config>`."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16."""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda | cuda:N."""


@dataclass(frozen=True)
class PretrainConfig:
    """The laptop world's base model, trained from scratch (pretrain stage; soar.addition)."""

    steps: int = 800
    """AdamW steps (batch `batch`, linear warmup 50 steps, then cosine)."""
    batch: int = 128
    """Corpus examples per step."""
    lr: float = 3e-3
    """Peak learning rate."""
    student_levels: tuple[float, ...] = (0.8, 0.2)
    """Share of each level (number of carries) among the student (solve) examples; levels past
    the list never appear."""
    carry_kept: float = 1.0
    """Probability that a student example keeps each of its carries (else the column is written
    without it): the student's misconception, fitted by cross-entropy, so at temperature 1 a
    problem with c carries is solved about carry_kept**c of the time (1.0: always right)."""
    clean_steps: int = 0
    """Steps at the start whose student examples are all right (carry_kept 1): the model learns
    addition in both modes before it fits the misconception."""
    teacher_share: float = 0.5
    """Share of teacher examples: a question of a level drawn by teacher_levels, with its answer."""
    teacher_levels: tuple[float, ...] = ()
    """Weights of the levels of teacher examples (empty: uniform)."""
    solved_up_to: int = 4
    """Highest level whose answer the teacher corpus writes correctly; above it the carries are
    dropped (the answer a beginner writes)."""


@dataclass(frozen=True)
class GenerationConfig:
    backend: str = "hf"
    """hf (Hugging Face forward passes, any machine) | vllm (GPU extra)."""
    batch_size: int = 32
    """Sequences decoded together; larger is faster until memory runs out."""
    top_p: float = 1.0
    """Nucleus sampling mass (the paper samples at temperature 1.0 without truncation)."""
    max_model_len: int = 4096
    """vllm: the longest prompt + completion an engine serves (its KV cache is sized for it): at
    least the longest prompt of a role plus its max_new_tokens (paper: prompts of a few hundred
    tokens, answers of 1024); a longer request is an error that names this key."""


@dataclass(frozen=True)
class GradingConfig:
    timeout_s: float = 5.0
    """Wall-clock bound of one answer check; a timeout scores as wrong and is counted."""
    workers: int = 2
    """Worker processes that run math-verify (it must run in a process's main thread)."""


@dataclass(frozen=True)
class FailAtKConfig:
    pools: tuple[str, ...] = ("gsm8k_test",)
    """Benchmarks whose fail@k problems form the hard sets (names from soar.data.BENCHMARKS)."""
    limit: int | None = 48
    """Problems drawn per pool (seeded); null = the whole pool (paper)."""
    levels: tuple[int, ...] | None = None
    """MATH difficulty levels kept (1..5); null = all."""
    k: int = 8
    """Samples per problem; a problem is hard when 0 of k are correct (paper: 128)."""
    temperature: float = 1.0
    """Sampling temperature of the filter (paper: 1.0)."""
    max_new_tokens: int = 256
    """Answer length cap of the filter (paper: 1024)."""
    train_fraction: float = 0.5
    """Share of the hard problems in D_train (the teacher's reward set); the rest is D_test."""


@dataclass(frozen=True)
class StudentConfig:
    adapter: str = "lora"
    """lora (adapters on the frozen baseline; g students share one base) | full (paper)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lr: float = 1e-5
    """AdamW learning rate (paper: 1e-5; LoRA usually wants ~10x more)."""
    warmup_steps: int = 0
    """Linear warmup before the cosine schedule (paper: 0 in the inner loop)."""
    kl_coef: float = 0.001
    """KL penalty to the baseline student (paper: 0.001)."""
    steps: int = 10
    """Inner-loop RLOO steps per dataset (paper: 10)."""
    extra_steps_after_promotion: int = 5
    """Added inner steps once a promotion has happened (paper: +5)."""
    questions_per_step: int = 8
    """Questions per inner step (paper: 8)."""
    samples_per_question: int = 32
    """Rollouts per question, the RLOO group (paper: 32)."""
    max_new_tokens: int = 1024
    """Student answer length cap (paper: 1024)."""
    temperature: float = 1.0
    """Student sampling temperature (paper: 1.0)."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    micro_batch: int = 4
    """Completions per forward/backward of an update (gradients accumulate over the batch; the
    result is the same up to float round-off): larger is faster until the logits' memory runs out."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward instead of keeping them: activation
    memory shrinks to the layers' inputs plus one layer, for one more forward per update (the same
    results). The memory plan (soar.budget) says when a GPU needs it."""


@dataclass(frozen=True)
class TeacherConfig:
    adapter: str = "lora"
    """lora | full (paper) for the teacher's own updates."""
    lora_r: int = 16
    """LoRA rank of the teacher."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lr: float = 1e-5
    """AdamW learning rate (paper: 1e-5, cosine)."""
    warmup_steps: int = 20
    """Linear warmup steps (paper: 20)."""
    kl_coef: float = 0.001
    """KL penalty to the initial teacher (paper: 0.001)."""
    max_new_tokens: int = 512
    """Teacher output length cap (paper: 512)."""
    temperature: float = 1.0
    """Teacher sampling temperature (paper: 1.0)."""
    max_attempts_factor: int = 20
    """Rejection-sampling cap: at most this many samples per valid pair needed."""
    one_shot: bool = False
    """Append one worked example pair to the teacher prompt (paper: no; it found seeded teachers
    copy the seeds). Tiny profile: yes, with response_prefix the smallest change that makes
    the 135M model write valid pairs (README, 'Tiny profile')."""
    response_prefix: str = ""
    """Text the teacher's reply is forced to start with (part of the prompt, never trained on).
    Paper: empty. Tiny profile: "<question>", the smallest change that makes the 135M model write
    the pair format at all (README, 'Tiny profile')."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    micro_batch: int = 4
    """Completions per forward/backward of an update (gradients accumulate over the batch; the
    result is the same up to float round-off): larger is faster until the logits' memory runs out."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward instead of keeping them: activation
    memory shrinks to the layers' inputs plus one layer, for one more forward per update (the same
    results). The memory plan (soar.budget) says when a GPU needs it."""


@dataclass(frozen=True)
class SoarConfig:
    reward: str = "grounded"
    """grounded (student's gain on Q_R) | intrinsic (learnability, Intrinsic-T) | shuffled (the
    grounded rewards permuted across the step's datasets: the Shuffled-T control)."""
    teacher_mode: str = "trained"
    """trained (meta-RL) | base (frozen teacher: the Base-T baseline)."""
    promotion: bool = True
    """Promote the student when the reward's moving average exceeds tau."""
    confirm: bool = False
    """Confirm a promotion on the part of D_train outside the step's Q_R: the candidate (the median
    student of the best dataset, picked on Q_R) is promoted only if its greedy gain over the
    baseline there also exceeds tau; else the baseline stays and the next step tries again. Off:
    the paper's rule (r >= 2 students and the median guard against the winner's curse; the
    laptop world, at r = 1, confirms instead: a deviation)."""
    outer_steps: int = 200
    """Teacher (outer) steps (paper: <= 200)."""
    n: int = 64
    """Question-answer pairs per dataset X_k (paper: 64)."""
    group_size: int = 4
    """Datasets per RLOO group g (paper: 4)."""
    groups_per_step: int = 2
    """Groups per teacher step, the teacher batch (paper: 2)."""
    r: int = 4
    """Independent student trainings per dataset (paper: 4)."""
    reward_metric: str = "accuracy"
    """Score of a student on Q_R, whose gain is the grounded reward: accuracy (paper, greedy) |
    shaped (mean shaped student reward, greedy; tiny profile, see README)."""
    q_r: int = 64
    """|Q_R|: questions drawn from D_train each outer step for the reward (paper: 64)."""
    tau: float = 0.01
    """Promotion threshold on the moving average of the mean reward (paper: 0.01)."""
    window: int = 3
    """Moving-average window of the promotion rule (paper: 3)."""
    intrinsic_samples: int = 32
    """Samples per question for the learnability reward (paper: 32)."""


@dataclass(frozen=True)
class RetrainConfig:
    methods: tuple[str, ...] = ("pq-curriculum", "pq-mixed", "grounded_t-curriculum", "base_t-curriculum",
                                "intrinsic_t-curriculum", "hard_only", "hard_only-g128", "oracle")
    """Fresh-student runs (names in soar.retrain.METHODS: <data>-<schedule>, hard_only[-g128], oracle)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every fresh student (paper: 6-12 nested seeds)."""
    soar_seed: int | None = None
    """The SOAR runs (soar stage seed) whose PQ, teachers and PS the fresh students learn from;
    null: nested seeds (PAPER.md), the i-th fresh seed learns from runs.seeds[i mod n]."""
    questions: int = 128
    """N: questions sampled from each teacher for Grounded-T, Base-T and Intrinsic-T (paper: 128)."""
    steps: int = 1500
    """RLOO steps of a fresh student (paper: <= 1500)."""
    synthetic_steps: int = 64
    """Curriculum schedule: steps on the synthetic questions before the hard train split (paper: 64)."""
    warmup_steps: int = 20
    """Warmup of the fresh students (paper: 20; 0 for curriculum schedules, as in the paper)."""
    questions_per_step: int = 8
    """Questions per RLOO step (paper: 8)."""
    samples_per_question: int = 32
    """RLOO group (paper: 32; hard_only-g128 uses 4x)."""
    max_new_tokens: int = 1024
    """Answer length cap while training (paper: 1024)."""
    eval_every: int = 50
    """Steps between saved checkpoints (the candidates of the checkpoint choice)."""
    smoothing: int = 20
    """Moving-average window of the training reward whose slope picks the checkpoint."""
    slope_fraction: float = 0.15
    """Checkpoint: the first step after the steepest rise where the slope is below this share of it."""
    window: int = 200
    """Test scores are averaged over the saved checkpoints within this many steps of the chosen one."""
    read_at: int | None = None
    """Read every method at this step (its window from there) instead of by the checkpoint rule: the
    same steps for every method, so no run is read in its first steps (the laptop world, whose
    short, noisy reward curves the slope rule reads anywhere from step 2 to the end); a run shorter
    than that is read at its last step. None: the rule."""


@dataclass(frozen=True)
class EvaluateConfig:
    n_samples: int = 32
    """Samples per test problem (paper: 32)."""
    ks: tuple[int, ...] = (1, 4, 8, 16, 32)
    """k of pass@k (each <= n_samples)."""
    limit: int | None = None
    """Test problems per benchmark (seeded sample); null = all."""
    extra: tuple[str, ...] = ()
    """Benchmarks evaluated whole besides the hard test splits (aime24, amc23; a HARP file by path)."""
    max_new_tokens: int = 1024
    """Answer length cap (paper: 1024)."""
    temperature: float = 1.0
    """Sampling temperature of the evaluation."""
    n_boot: int = 1000
    """Bootstrap draws of the 95% confidence intervals (resampling seeds, then test problems)."""


@dataclass(frozen=True)
class AnalysisConfig:
    judge: str = "local"
    """Judge backend: local (a Hugging Face model on this machine) | openai (any OpenAI-compatible
    chat endpoint: vLLM, llama.cpp, a hosted API)."""
    judge_model: str | None = None
    """local: a model name for soar.models (null: model.name); openai: the served model's name."""
    base_url: str | None = None
    """openai: the endpoint, e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str = "SOAR_JUDGE_API_KEY"
    """openai: the environment variable holding the key (read at call time, never logged)."""
    concurrency: int = 8
    """openai: requests in flight at once."""
    timeout_s: float = 50.0
    """openai: seconds to wait for an answer; a request that times out twice fails the stage (a hung
    server fails within 2 minutes); raise it for slow servers."""
    retries: int = 4
    """openai: retries of a failed request (connection errors, 429, 5xx; a timeout once), with
    exponential backoff."""
    solve_samples: int = 4
    """m: the judge re-solves each question m times; the majority answer is graded against the teacher's."""
    solve_max_new_tokens: int = 512
    """Length cap of each re-solve."""
    verdict_max_new_tokens: int = 256
    """Length cap of the JSON verdict (greedy)."""
    temperature: float = 0.7
    """Sampling temperature of the re-solves."""
    questions: int | None = None
    """Questions judged per variant (seeded sample); null = all."""
    embedder: str = "all-MiniLM-L6-v2"
    """Sentence-transformers model for Vendi and drift (all-MiniLM-L6-v2 ships offline; any name works)."""
    vendi_size: int = 128
    """Questions per Vendi draw (paper: 128); every column uses min(this, its smallest pool), recorded."""
    vendi_draws: int = 100
    """Vendi draws per variant (paper: 100)."""
    subject_examples: int = 50
    """MATH train problems per subject behind the nearest-centroid topic classifier (drift)."""
    n_boot: int = 1000
    """Bootstrap draws of the reward-association CIs."""


@dataclass(frozen=True)
class ParallelConfig:
    backend: str = "inprocess"
    """Who runs the inner loops of a teacher step: inprocess (one after another), processes
    (worker processes of this machine, one thread each) or ray (actors, on a cluster's GPUs);
    each worker has its own student, and the seeds are the jobs' own."""
    workers: int = 2
    """Worker processes or Ray actors (each holds one copy of the student model)."""
    address: str | None = None
    """`ray.init(address=...)`: null starts a local Ray; "auto" or "ray://host:10001" joins a cluster."""
    gpus_per_worker: float = 0.0
    """GPUs per actor (1 on a GPU cluster; 0 runs CPU actors, which see no GPU)."""
    actor_gpus: tuple[int, ...] | None = None
    """GPUs (CUDA indexes) a local Ray's actors may use when gpus_per_worker > 0; null: every
    visible GPU but the driver's (model.device). A cluster's nodes declare theirs (`ray start
    --num-gpus`)."""
    batch_students: int = 1
    """Students one worker trains at once (batched students): LoRA, one adapter each on its base,
    their answers sampled in one mixed-adapter batch; full, K stacked copies of a small fp32 Llama
    in one forward and backward (soar.stacked). 1 trains them one after another. The same results
    up to float round-off from the larger batch."""
    batch_dtype: str = "float32"
    """float32 | bfloat16: the matmuls of batched full students (soar.stacked) while they train;
    their weights (fp32 masters), residual stream, norms, attention and logits stay fp32, and their
    Q_R scores are computed in fp32, as the baseline's. bfloat16 ran the world's inner loop ~1.4x
    faster on an AVX512-BF16 CPU (benchmarks/bench_world.py), with the same gains up to round-off."""


@dataclass(frozen=True)
class SweepConfig:
    taus: tuple[float, ...] = (0.01,)
    """Promotion thresholds of the sensitivity sweep (sweep stage; paper Fig. 17: 0.01, 0.015, 0.02)."""
    ns: tuple[int, ...] = (4,)
    """Dataset sizes n of the sweep (paper Fig. 17: 8, 16, 32, 64)."""
    seed: int = 0
    """Seed of every sweep run (variant `sweep`: its sizes are under variants.sweep)."""


@dataclass(frozen=True)
class RunsConfig:
    variants: tuple[str, ...] = ("grounded",)
    """SOAR runs of the `soar` stage (names in `variants`); DVC runs each variant x seed."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of every SOAR run (the paper reports several)."""


@dataclass(frozen=True)
class Config:
    profile: str = BASE_PROFILE
    """addition (params.yaml itself: the laptop world) | an overlay in profiles/<profile>.yaml
    (which may `extends:` another): tiny (SmolLM2-135M on GSM8K) | smoke (CI) | paper (Table 3)."""
    seed: int = 0
    """Root seed; every other seed is derived from it with soar.data.seed_from."""
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grading: GradingConfig = field(default_factory=GradingConfig)
    fail_at_k: FailAtKConfig = field(default_factory=FailAtKConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    soar: SoarConfig = field(default_factory=SoarConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    variants: dict = field(default_factory=lambda: {"grounded": {}})
    """Variant name -> overrides of the sections above (`load(..., variant=name)` applies them):
    PAPER.md's grounded (SOAR), intrinsic (Intrinsic-T), no_promotion, base_teacher (Base-T)."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; lists become tuples, ints may be floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads 1e-5 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Fields with a closed set of values; anything else is an error naming the key.
CHOICES = {
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "generation.backend": ("hf", "vllm"),
    "student.adapter": ("lora", "full"),
    "teacher.adapter": ("lora", "full"),
    "soar.reward": ("grounded", "intrinsic", "shuffled"),
    "soar.teacher_mode": ("trained", "base"),
    "soar.reward_metric": ("accuracy", "shaped"),
    "parallel.backend": ("inprocess", "processes", "ray"),
    "parallel.batch_dtype": ("float32", "bfloat16"),
}


def from_dict(data: dict, *, where: str = "params") -> Config:
    """Build a Config from a plain mapping (checks keys, types and the CHOICES)."""
    cfg = _build(Config, data or {}, "")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
    if cfg.parallel.batch_students < 1:
        raise ConfigError(f"parallel.batch_students: must be >= 1, got {cfg.parallel.batch_students}")
    if cfg.parallel.batch_students > 1 and cfg.student.adapter == "full" and cfg.generation.backend != "hf":
        raise ConfigError("parallel.batch_students > 1 with student.adapter: full samples on soar.stacked's own "
                          "forward: it needs generation.backend: hf")
    if cfg.retrain.soar_seed is not None and cfg.retrain.soar_seed not in cfg.runs.seeds:
        raise ConfigError(f"retrain.soar_seed: {cfg.retrain.soar_seed} is not a SOAR seed (runs.seeds: "
                          f"{list(cfg.runs.seeds)}); null pairs the fresh seeds with them in turn")
    if cfg.retrain.read_at is not None and cfg.retrain.read_at < 1:
        raise ConfigError(f"retrain.read_at: must be a step (>= 1) or null, got {cfg.retrain.read_at}")
    if cfg.generation.backend == "vllm":
        caps = {"teacher.max_new_tokens": cfg.teacher.max_new_tokens, "student.max_new_tokens": cfg.student.max_new_tokens,
                "fail_at_k.max_new_tokens": cfg.fail_at_k.max_new_tokens, "retrain.max_new_tokens": cfg.retrain.max_new_tokens,
                "evaluate.max_new_tokens": cfg.evaluate.max_new_tokens,
                "analysis.solve_max_new_tokens": cfg.analysis.solve_max_new_tokens,
                "analysis.verdict_max_new_tokens": cfg.analysis.verdict_max_new_tokens}
        key, cap = max(caps.items(), key=lambda kv: kv[1])
        if cfg.generation.max_model_len <= cap:
            raise ConfigError(f"generation.max_model_len: {cfg.generation.max_model_len} leaves no room for a prompt "
                              f"before {key}={cap}")
    return cfg


def _profile_layer(root: Path, profile: str, *, chain: tuple[str, ...]) -> dict:
    """The overlay of `profile`: profiles/<profile>.yaml on top of the profile it `extends`
    (default: params.yaml itself, the base profile)."""
    if profile == BASE_PROFILE:
        return {}
    overlay = root / "profiles" / f"{profile}.yaml"
    if profile in chain:
        raise ConfigError(f"{overlay}: profiles extend each other in a cycle: {' -> '.join(chain + (profile,))}")
    if not overlay.exists():
        raise ConfigError(f"profile {profile!r} has no file {overlay}")
    try:
        layer = yaml.safe_load(overlay.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{overlay}: invalid YAML: {e}") from e
    for key in ("runs", "sweep", "profile"):  # dvc.yaml expands its matrices from params.yaml alone
        if key in layer:
            raise ConfigError(f"{overlay}: `{key}` is read from params.yaml only; set it there")
    parent = layer.pop("extends", BASE_PROFILE)
    return _merge(_profile_layer(root, parent, chain=chain + (profile,)), layer)


def _leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"soar.tau": 0.01, ...}: the dotted keys of a nested mapping's leaves."""
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _committed(path: Path) -> dict | None:
    """The params file as git's HEAD holds it, or None (no git, not tracked, unreadable)."""
    import subprocess

    try:
        text = subprocess.run(["git", "-C", str(path.parent), "show", f"HEAD:./{path.name}"], capture_output=True,
                              text=True, timeout=10, check=True).stdout
        committed = yaml.safe_load(text)
    except (OSError, subprocess.SubprocessError, yaml.YAMLError):
        return None
    return committed if isinstance(committed, dict) else None


def _refuse_shadowed_edits(path: Path, raw: dict, layer: dict, profile: str) -> None:
    """A value edited in params.yaml that the active profile's overlay overrides would be silently
    ignored (`dvc exp run -S soar.tau=0.02` under profile: paper): an error naming the file to edit.
    "Edited" means changed since git's HEAD, so the check needs git; without it, nothing is said.
    Only where the file itself names the profile (as under DVC): a caller that picks a profile in
    code (tests, benchmarks) is not sweeping this file."""
    if profile == BASE_PROFILE or raw.get("profile") != profile or not layer:
        return
    committed = _committed(path)
    if committed is None:
        return
    now, then = _leaves(raw), _leaves(committed)
    for key in sorted(set(_leaves(layer)) & set(now)):
        if key in then and now[key] != then[key]:
            raise ConfigError(f"{path}: {key} = {now[key]!r} has no effect under profile {profile!r}, whose overlay "
                              f"sets it: edit profiles/{profile}.yaml (or a profile it extends) instead, e.g. "
                              f"`dvc exp run -S profiles/{profile}.yaml:{key}={now[key]}`")


def load(path: str | Path = "params.yaml", overrides: dict | None = None, *, variant: str | None = None) -> Config:
    """Read params.yaml, apply its profile overlay, then the named variant's overrides, then
    `overrides` (papermill sweeps). Later layers win."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    raw, data = data, _merge(data, overrides or {})
    profile = data.get("profile", BASE_PROFILE)
    layer = _profile_layer(path.parent, profile, chain=())
    _refuse_shadowed_edits(path, raw, layer, profile)
    data = _merge(data, layer)
    if variant is not None:
        variants = data.get("variants") or {}
        if variant not in variants:
            raise ConfigError(f"{path}: unknown variant {variant!r}; known: {sorted(variants)}")
        data = _merge(data, variants[variant] or {})
    data = _merge(data, overrides or {})  # explicit overrides win over profile and variant
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}{f' (variant {variant!r})' if variant else ''}: {e}") from None


def to_dict(cfg: Any) -> dict:
    """Plain-dict view (tuples as lists) for logging the resolved config."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(cfg))))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings of a config dataclass, read from its source (for the README glossary)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def fingerprint(cfg: Config) -> str:
    """Short hash of the resolved config and of the soar stage's code (code_digest("soar")): a
    SOAR state of other params or other code is never resumed."""
    # Which runs exist (runs, variants, sweep), who executes them (parallel) and what later stages
    # do with them (retrain, evaluate, analysis) do not change what one SOAR run computes.
    later = ("runs", "variants", "sweep", "parallel", "retrain", "evaluate", "analysis")
    resolved = {k: v for k, v in to_dict(cfg).items() if k not in later}
    blob = json.dumps({"config": resolved, "code": code_digest("soar")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_ROOT = Path(__file__).resolve().parent.parent


def stage_code(stage: str, root: Path = _ROOT) -> list[Path]:
    """The package sources a DVC stage depends on: its `soar/*.py` deps in root/dvc.yaml (every
    module of root/soar where there is no dvc.yaml, as in an installed copy)."""
    dvc = root / "dvc.yaml"
    if not dvc.exists():
        return sorted((root / "soar").glob("*.py"))
    deps = yaml.safe_load(dvc.read_text())["stages"][stage]["deps"]
    return sorted(root / d for d in deps if d.startswith("soar/") and d.endswith(".py"))


# Code that draws what a stage shows, redrawn on every run (a resumed one too): a stage depends on
# it (DVC re-runs the stage to redraw), its fingerprints do not (the work is resumed, not redone).
PRESENTATION = ("plots.py",)


@functools.cache
def code_digest(stage: str, root: Path = _ROOT) -> str:
    """Short hash of the code a stage computes with (`stage_code` but PRESENTATION), part of every
    fingerprint that lets it resume or skip work (SOAR states, teacher questions, fresh students,
    evaluations). DVC re-runs a stage when those files change; the stage must then compute anew,
    not pick up what the old code left (a finished SOAR state would be "resumed" as it is, an
    evaluation skipped). Only the stage's own deps, so an edit elsewhere leaves the fingerprints,
    and the results that record them, as they were; a killed run resumes unless its code changed."""
    h = hashlib.sha256()
    for path in (p for p in stage_code(stage, root) if p.name not in PRESENTATION):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]
