"""What a profile costs, in time and in memory.

Time: the tokens each stage samples and trains on, counted from the resolved config
(`soar_work`, `soar_step_work`, `retrain_work`, `evaluate_work`), and the hours that takes at
given throughputs (`hours`, `outer_step_hours`); `roofline_rates` gives a GPU's ideal throughputs
for a model shape. `benchmarks/project_paper.py` builds the paper-profile projection on it;
`projection` projects every stage of a profile on one device (`benchmarks/project_gpu1.py`).
Counts are upper bounds where lengths vary: every completion is taken at its token cap, prompts
at a given mean length. Not counted: the teacher's rejected samples and the extra inner steps
after a promotion (both small next to the inner loops), grading, and model loading.

Memory: the memory plan (`memory_plan`, `check_memory`), made from the resolved config and the
model's config.json before any model loads. It counts what each policy (soar.policy) holds on its
device and places them: the teacher on one GPU, the run's student on another, Ray actors' students
on GPUs the driver does not hold. GPU placement lives here only: the notebooks load each policy on
the device the plan gives it. A layout that cannot fit is a MemoryPlanError naming the knobs that
would make it fit; on a CPU the plan only warns (the OS pages, and CPU runs are never blocked).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from soar import paths
from soar.config import ConfigError
from soar.models import pick_dtype
from soar.retrain import kept_checkpoints, method, tested_pool
from soar.sampling import VLLM_GPU_MEMORY


@dataclass(frozen=True)
class Work:
    """sampled: completion tokens decoded; trained: prompt + completion tokens through a
    policy-gradient update (forward, backward and the reference model's forward)."""

    sampled: float = 0.0
    trained: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.sampled + other.sampled, self.trained + other.trained)

    def __mul__(self, k: float) -> Work:
        return Work(self.sampled * k, self.trained * k)


def rl_steps(steps: int, sequences_per_step: int, max_new_tokens: int, prompt: float) -> Work:
    """`steps` RLOO steps of `sequences_per_step` completions each."""
    seqs = steps * sequences_per_step
    return Work(seqs * max_new_tokens, seqs * (prompt + max_new_tokens))


def soar_step_work(cfg, *, prompt: float, teacher_prompt: float) -> dict[str, Work]:
    """One outer step of a SOAR run (cfg resolved for its variant), by who does it:
    - teacher: g*B datasets of n questions, sampled, then trained on;
    - baseline: the run's student, greedy on Q_R, and for the intrinsic variant
      intrinsic_samples answers per question of every dataset (its reward);
    - inner_loops: per dataset r students, each trained then scored greedily on Q_R. The
      intrinsic variant runs them too: the grounded gain decides its promotions
      (soar.teacher.SoarRun.meta_step)."""
    sc, st, tc = cfg.soar, cfg.student, cfg.teacher
    datasets = sc.groups_per_step * sc.group_size
    baseline = Work(sc.q_r * st.max_new_tokens)
    if sc.reward == "intrinsic":
        baseline += Work(datasets * sc.n * sc.intrinsic_samples * st.max_new_tokens)
    inner = rl_steps(st.steps, st.questions_per_step * st.samples_per_question, st.max_new_tokens, prompt)
    return {"teacher": rl_steps(1, datasets * sc.n, tc.max_new_tokens, teacher_prompt),
            "baseline": baseline,
            "inner_loops": (inner + Work(sc.q_r * st.max_new_tokens)) * (datasets * sc.r)}


def soar_work(cfg, *, prompt: float, teacher_prompt: float) -> Work:
    """One SOAR run: soar.outer_steps outer steps (soar_step_work)."""
    step = sum(soar_step_work(cfg, prompt=prompt, teacher_prompt=teacher_prompt).values(), Work())
    return step * cfg.soar.outer_steps


def retrain_work(cfg, *, prompt: float) -> Work:
    """Every fresh student of the retrain stage: pools x methods x seeds RLOO runs."""
    rc, total = cfg.retrain, Work()
    for name in rc.methods:
        per_step = rc.questions_per_step * rc.samples_per_question * method(name).group_factor
        total += rl_steps(rc.steps, per_step, rc.max_new_tokens, prompt)
    return total * (len(cfg.fail_at_k.pools) * len(rc.seeds))


def evaluate_work(cfg, test_problems: Mapping[str, int]) -> Work:
    """The evaluate stage: on every benchmark, n_samples answers per test problem from the base
    model and the PS (one checkpoint each) and every fresh student of the pool it tests (the
    checkpoints that student keeps: its window's, or one for a READ_AT pool), once per seed.
    test_problems: {benchmark: problem count}."""
    ec, rc = cfg.evaluate, cfg.retrain
    return Work(sum(count * (2 + len(rc.methods) * kept_checkpoints(cfg, tested_pool(cfg, benchmark)))
                    for benchmark, count in test_problems.items()) * ec.n_samples * ec.max_new_tokens * len(rc.seeds))


def fail_at_k_work(cfg, pool_sizes: Mapping[str, int]) -> Work:
    """The fail_at_k stage: k answers sampled for each problem of each pool (at most
    fail_at_k.limit of it). pool_sizes: {pool: problem count}."""
    fc = cfg.fail_at_k
    return Work(sum(min(pool_sizes[p], fc.limit or pool_sizes[p]) for p in fc.pools) * fc.k * fc.max_new_tokens)


def most_test_problems(cfg, sizes: Mapping[str, int]) -> dict[str, int]:
    """The most problems the evaluate stage can test on each benchmark (the hard sets are made by
    the run): each pool's hard test split were every problem fail_at_k draws hard (its
    1 - train_fraction share), each extra benchmark whole; at most evaluate.limit each.
    sizes: {benchmark: problem count}."""
    fc, limit = cfg.fail_at_k, cfg.evaluate.limit
    bound = {p: int(min(sizes[p], fc.limit or sizes[p]) * (1 - fc.train_fraction)) for p in fc.pools}
    bound |= {b: sizes[b] for b in cfg.evaluate.extra}
    return {b: min(n, limit or n) for b, n in bound.items()}


@dataclass(frozen=True)
class Shape:
    """What throughput depends on: parameters, KV-cache bytes per token, bytes per weight."""

    params: float
    kv_bytes_per_token: float
    bytes_per_param: int = 2


@dataclass(frozen=True)
class Hardware:
    """Peak dense matmul FLOP/s and memory bandwidth (bytes/s) of one accelerator."""

    name: str
    flops: float
    bandwidth: float


def roofline_rates(shape: Shape, hw: Hardware, *, batch: int, context: float, full: bool,
                   kl: bool = True, recompute: bool = False) -> tuple[float, float]:
    """(sampled tokens/s, trained tokens/s) of one accelerator at its roofline.

    Decoding is memory-bound: each step of `batch` rows reads every weight once and each row's
    KV cache (`context` tokens on average). Training is compute-bound: per token 2N FLOPs
    forward, 4N backward with weight gradients (full fine-tuning) or 2N without (LoRA: only
    activation gradients reach the base), 2N for the reference forward of the KL term, and 2N
    more when gradient checkpointing recomputes the forward (`recompute`)."""
    step_bytes = shape.params * shape.bytes_per_param + batch * context * shape.kv_bytes_per_token
    flops_per_token = shape.params * (2 + (4 if full else 2) + (2 if kl else 0) + (2 if recompute else 0))
    return batch * hw.bandwidth / step_bytes, hw.flops / flops_per_token


def hours(work: Work, *, sampled_per_s: float, trained_per_s: float) -> float:
    """Hours of one device (or device-hours) for `work` at the given throughputs."""
    return (work.sampled / sampled_per_s + work.trained / trained_per_s) / 3600


def projection(cfg, hw: Hardware, *, prompt: float, teacher_prompt: float, pool_sizes: Mapping[str, int],
               test_problems: Mapping[str, int], efficiency: Sequence[float]) -> dict:
    """One device's hours for each stage of `cfg` on `hw`, for its model's shape (its config.json):
    the work (fail_at_k_work, soar_work of one run of cfg's variant, retrain_work, evaluate_work),
    its hours at the roofline, and those hours over each share of the roofline in `efficiency`
    (a realized share: benchmarks/project_paper.py fits it to the paper's reported costs).
    Each part runs at the roofline of its own decode batch, generation.batch_size rows at most:
    one student's RLOO step decodes questions_per_step x samples_per_question rows, or
    parallel.batch_students times as many batched on one base (the SOAR inner loops), and a
    decode step reads every weight however few rows share it (a retrain method's group factor
    aside); its context is its prompt plus half its token cap; the teacher's update runs at the
    teacher's training rate (adapter, KL, recompute).
    "one_run" is one SOAR run with the fresh students and evaluation that read it (retrain +
    evaluate); "with_fail_at_k" adds the stage that makes the hard sets."""
    arch = architecture(cfg.model.name)
    if arch is None:
        raise ConfigError(f"model {cfg.model.name!r}: no config.json at hand to project")
    shape, g, sc, st, rc = arch.shape(), cfg.generation.batch_size, cfg.soar, cfg.student, cfg.retrain

    def rates(role, rows: int, context: float) -> tuple[float, float]:
        return roofline_rates(shape, hw, batch=min(g, rows), context=context, full=role.adapter == "full",
                              kl=role.kl_coef > 0, recompute=role.gradient_checkpointing)

    step = soar_step_work(cfg, prompt=prompt, teacher_prompt=teacher_prompt)
    datasets = sc.groups_per_step * sc.group_size
    inner_rows = min(cfg.parallel.batch_students, datasets * sc.r) * st.questions_per_step * st.samples_per_question
    parts = {  # stage: [(work, (sampled/s, trained/s)), ...] at the roofline
        "fail_at_k": [(fail_at_k_work(cfg, pool_sizes), rates(st, g, prompt + cfg.fail_at_k.max_new_tokens / 2))],
        "soar_run": [(step["teacher"] * sc.outer_steps, rates(cfg.teacher, datasets * sc.n,
                                                              teacher_prompt + cfg.teacher.max_new_tokens / 2)),
                     (step["baseline"] * sc.outer_steps, rates(st, sc.q_r, prompt + st.max_new_tokens / 2)),
                     (step["inner_loops"] * sc.outer_steps, rates(st, inner_rows, prompt + st.max_new_tokens / 2))],
        "retrain": [(retrain_work(cfg, prompt=prompt), rates(st, rc.questions_per_step * rc.samples_per_question,
                                                             prompt + rc.max_new_tokens / 2))],
        "evaluate": [(evaluate_work(cfg, test_problems), rates(st, g, prompt + cfg.evaluate.max_new_tokens / 2))],
    }
    parts["one_run"] = parts["soar_run"] + parts["retrain"] + parts["evaluate"]
    parts["with_fail_at_k"] = parts["one_run"] + parts["fail_at_k"]
    ideal = {stage: sum(hours(w, sampled_per_s=r[0], trained_per_s=r[1]) for w, r in ps) for stage, ps in parts.items()}
    work = {stage: sum((w for w, _ in ps), Work()) for stage, ps in parts.items()}
    shares = sorted(efficiency, reverse=True)  # fastest first
    return {"work": {k: {"sampled": w.sampled, "trained": w.trained} for k, w in work.items()},
            "ideal_hours": ideal, "hours": {k: [h / e for e in shares] for k, h in ideal.items()}}


def outer_step_hours(cfg, plan: MemoryPlan, step: Mapping[str, Work], *, student: tuple[float, float],
                     teacher: tuple[float, float]) -> dict[str, float]:
    """Hours of one outer step (`step`: soar_step_work) on the plan's GPUs, at per-GPU
    (sampled, trained) tokens/s of each role. The phases run one after another
    (SoarRun.meta_step): propose, baseline, inner loops, teacher update. The inner loops' g*B*r
    students go to the plan's student slots in contiguous shares of ceil(students / slots), so a
    step waits for the largest share. Returns the wall-clock hours (the GPUs held: x wall), the
    GPU-hours computed (busy), the slots and how many of them get a share."""
    sc = cfg.soar
    students = sc.groups_per_step * sc.group_size * sc.r
    share = -(-students // plan.student_slots)

    def h(work: Work, rates: tuple[float, float]) -> float:
        return hours(work, sampled_per_s=rates[0], trained_per_s=rates[1])

    driver = h(step["teacher"], teacher) + h(step["baseline"], student)
    inner = h(step["inner_loops"], student)
    return {"wall_hours": driver + inner * share / students, "busy_gpu_hours": driver + inner,
            "student_slots": plan.student_slots, "busy_slots": -(-students // share)}


# --- The memory plan -------------------------------------------------------------------------

GiB = 2**30
# Share of each device the plan may fill: the CUDA context, cuBLAS workspaces and the caching
# allocator's fragmentation take the rest.
USABLE = 0.9
# Longest prompt of a batch, padding included (paper: 153 tokens on average for MATH, 154 for the teacher).
PROMPT_TOKENS = 256
# Hub ids whose config.json ships with the repository, for a plan before the weights are cached.
KNOWN = {"meta-llama/Llama-3.2-3B-Instruct": paths.ROOT / "benchmarks" / "llama-3.2-3b",
         "meta-llama/Llama-3.2-1B-Instruct": paths.ROOT / "benchmarks" / "llama-3.2-1b"}


class MemoryPlanError(ConfigError):
    """The config's layout does not fit the devices; the message names the knobs that would help."""


@dataclass(frozen=True)
class Architecture:
    """A Llama-style decoder's shape, as its config.json gives it."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool  # the output layer is the input embedding
    context: int  # max_position_embeddings

    @classmethod
    def from_config(cls, c: Mapping) -> Architecture:
        heads = c["num_attention_heads"]
        return cls(hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
                   kv_heads=c.get("num_key_value_heads") or heads,
                   head_dim=c.get("head_dim") or c["hidden_size"] // heads, intermediate=c["intermediate_size"],
                   vocab=c["vocab_size"], tied=c.get("tie_word_embeddings", False),
                   context=c.get("max_position_embeddings", 0))

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of a decoder layer: q, k, v, o, gate, up, down (what LoRA's
        all-linear adapts; peft leaves the output layer alone)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def params(self) -> int:
        layer = sum(a * b for a, b in self.linears()) + 2 * self.hidden  # + its two RMSNorm weights
        return self.layers * layer + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def lora_params(self, r: int) -> int:
        return self.layers * sum(r * (a + b) for a, b in self.linears())

    def kv_bytes_per_token(self, bytes_per_value: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value

    def layer_activation_bytes(self, bytes_per_value: int) -> int:
        """What one decoder layer keeps per token for its backward: about 8 hidden-size and 4
        intermediate-size tensors in the model's dtype, and the RMSNorms' fp32 internals (8 bytes
        per hidden unit). Fitted to the saved tensors of soar.policy's forward on small Llamas,
        fp32 and bf16 (within 10%)."""
        return bytes_per_value * (8 * self.hidden + 4 * self.intermediate) + 8 * self.hidden

    def shape(self, bytes_per_param: int = 2) -> Shape:
        """The roofline's view of it (roofline_rates)."""
        return Shape(self.params, self.kv_bytes_per_token(bytes_per_param), bytes_per_param)


def architecture(name: str) -> Architecture | None:
    """The shape of model `name` (a soar.models name) from its config.json, read without loading
    or downloading anything: a folder or file (`random:<config>` too), models/<name> (the
    embedded and trained models once on disk), the local Hugging Face cache, or the config this
    repository ships (KNOWN). None when none is at hand."""
    source = name.removeprefix("random:")
    candidates = [Path(source), Path(source) / "config.json", paths.MODELS / name / "config.json"]
    if source.count("/") == 1 and not Path(source).exists():  # a hub id: its cached config, if any
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        if isinstance(cached, str):
            candidates.append(Path(cached))
    if source in KNOWN:
        candidates.append(KNOWN[source] / "config.json")
    for path in candidates:
        if path.is_file():
            return Architecture.from_config(json.loads(path.read_text()))
    return None


@dataclass(frozen=True)
class ModelMemory:
    """Bytes one policy needs on its device: `resident` while it lives, and per phase what comes
    and goes (one process runs one phase of one model at a time)."""

    role: str
    resident: dict[str, float]
    phases: dict[str, dict[str, float]]

    @property
    def held(self) -> float:
        return sum(self.resident.values())

    @property
    def working(self) -> tuple[str, float]:
        """The phase that needs most, and what it needs."""
        return max(((p, sum(parts.values())) for p, parts in self.phases.items()), key=lambda x: x[1])

    @property
    def peak(self) -> float:
        return self.held + self.working[1]


def model_memory(cfg, role: str, arch: Architecture, *, bytes_per_param: int, capacity: float = 0.0,
                 prompt: float = PROMPT_TOKENS) -> ModelMemory:
    """What the `role` ("teacher" or "student") policy of `cfg` holds (soar.policy, soar.sampling):
    - resident: the weights it computes with; the frozen reference (full fine-tuning: the base, a
      second copy; LoRA: none, the same base with the adapter off); the fp32 masters of the trained
      weights (the weights themselves in fp32; LoRA adapters are fp32: their own masters); AdamW's
      fp32 m and v; the student's batched students' adapters and moments (parallel.batch_students);
      with generation.backend vllm, its engine's share of the device;
    - rollout (HF backend): the KV cache of a decode batch, generation.batch_size rows of
      prompt + max_new_tokens, and one step's fp32 logits and sampling noise;
    - backward, one micro-batch of micro_batch x (prompt + max_new_tokens) tokens: fp32 gradients
      on the masters plus one compute weight's own on its way there (the largest), the layers'
      activations (with gradient checkpointing: each layer's input, and one layer recomputed), and
      the (micro_batch x T x V) logits: their fp32 copy kept for the backward, and in the backward
      their gradient plus one sequence's on its way in, each (micro_batch x T x V) in the model's
      dtype (soar.rl.token_logps goes one sequence at a time; autograd widens each to the whole);
    - optimizer step: the fp32 gradients (AdamW is fused on CUDA, soar.policy.make_optimizer: it
      makes no temporary of the trained weights' size, as the foreach one does).
    Student lengths are the longest of its stages (SOAR inner loops, retrain, evaluate)."""
    rc, w = getattr(cfg, role), bytes_per_param
    if role == "student":
        new, trained_new = (max(cfg.student.max_new_tokens, cfg.retrain.max_new_tokens, cfg.evaluate.max_new_tokens),
                            max(cfg.student.max_new_tokens, cfg.retrain.max_new_tokens))
    else:
        new = trained_new = rc.max_new_tokens
    full = rc.adapter == "full"
    weights = arch.params * w
    trained = arch.params if full else arch.lora_params(rc.lora_r)
    separate = not full or w != 4  # the masters are not the compute weights themselves
    resident = {"weights": weights, "reference": weights if full else 0.0,
                "fp32 masters": trained * 4 if separate else 0.0, "AdamW m, v": 2 * trained * 4}
    if role == "student" and not full and cfg.parallel.batch_students > 1:
        # batched students (Policy.students): an fp32 adapter and its AdamW moments each, beside the policy's own
        resident["batched students"] = cfg.parallel.batch_students * trained * (4 + 2 * 4)
    phases = {}
    batch = cfg.generation.batch_size
    if cfg.generation.backend == "vllm":
        resident["vLLM engine"] = VLLM_GPU_MEMORY * capacity
    else:
        phases["rollout"] = {"KV cache": batch * _length(arch, prompt, new) * arch.kv_bytes_per_token(w),
                             "decode logits": batch * arch.vocab * (w + 8)}
    tokens = rc.micro_batch * _length(arch, prompt, trained_new)
    layers = (arch.layers * arch.hidden * w + arch.layer_activation_bytes(w) if rc.gradient_checkpointing
              else arch.layers * arch.layer_activation_bytes(w))
    # one weight's own gradient at a time, on its way to its master (soar.policy): the largest, the embedding
    phases["backward"] = {"gradients": trained * 4 + (arch.vocab * arch.hidden * w if full and w != 4 else 0.0),
                          "activations": tokens * layers, "logits": tokens * arch.vocab * (4 + 2 * w)}
    phases["optimizer step"] = {"gradients": trained * 4}
    return ModelMemory(role, resident, phases)


def _length(arch: Architecture, prompt: float, new: int) -> float:
    """Tokens of a prompt + completion, at most the model's context."""
    return min(prompt + new, arch.context) if arch.context else prompt + new


@dataclass(frozen=True)
class Device:
    """One GPU (or the host) and the processes on it: each a list of models that take turns (the
    driver's teacher and student, or one Ray actor's student); processes run at once."""

    name: str
    capacity: float
    processes: tuple[tuple[ModelMemory, ...], ...]

    @property
    def need(self) -> float:
        return sum(sum(m.held for m in models) + max(m.working[1] for m in models) for models in self.processes)

    @property
    def fits(self) -> bool:
        return self.need <= USABLE * self.capacity

    def describe(self) -> str:
        lines = [f"{self.name}: needs {size(self.need)} of {size(USABLE * self.capacity)} usable "
                 f"({size(self.capacity)}) -> {'fits' if self.fits else 'DOES NOT FIT'}"]
        for models in self.processes:
            for m in models:
                phase, need = m.working
                lines.append(f"  {m.role}: {size(m.held)} resident ({_parts(m.resident)}) + {size(need)} at its "
                             f"{phase} ({_parts(m.phases[phase])})")
        return "\n".join(lines)


def size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"


def _parts(parts: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {size(v)}" for k, v in parts.items() if v)


@dataclass(frozen=True)
class MemoryPlan:
    """Where each model goes and whether it fits. placement: role ("teacher", "student", "actor k")
    -> device name; student_slots: the workers that train inner loops at once (1 in-process)."""

    devices: tuple[Device, ...]
    placement: dict[str, str]
    student_slots: int
    problems: tuple[str, ...] = ()  # what does not fit besides a device's total
    notes: tuple[str, ...] = ()
    gpu: bool = True

    @property
    def fits(self) -> bool:
        return not self.problems and all(d.fits for d in self.devices)

    def model(self, model_cfg, role: str):
        """model_cfg (ModelConfig) with the device the plan gives `role` (unchanged on the CPU)."""
        return replace(model_cfg, device=self.placement[role]) if self.gpu and role in self.placement else model_cfg

    def parallel(self, parallel_cfg):
        """parallel_cfg (ParallelConfig) with the GPUs the plan gives the Ray actors (actor_gpus)."""
        gpus = dict.fromkeys(int(d.removeprefix("cuda:")) for r, d in self.placement.items() if r.startswith("actor "))
        return replace(parallel_cfg, actor_gpus=tuple(gpus)) if self.gpu and gpus else parallel_cfg

    def summary(self) -> str:
        where = ", ".join(f"{r} -> {d}" for r, d in self.placement.items())
        head = f"memory plan ({'GPU' if self.gpu else 'CPU, host RAM'}): {where or 'nothing placed'}"
        return "\n".join([head, *(d.describe() for d in self.devices), *self.problems, *self.notes])


def visible_devices(model_device: str) -> list[tuple[str, float]]:
    """(name, bytes) of the GPUs model.device lets a run use: every visible one for auto/cuda,
    the one named by cuda:N; none on a CPU."""
    if model_device == "cpu" or not torch.cuda.is_available():
        return []
    if model_device.startswith("cuda:"):
        return [(model_device, torch.cuda.get_device_properties(int(model_device[5:])).total_memory)]
    return [(f"cuda:{i}", torch.cuda.get_device_properties(i).total_memory) for i in range(torch.cuda.device_count())]


def host_memory() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_plan(cfg, devices: Sequence[float] | None = None, *, roles: Sequence[str] = ("teacher", "student"),
                prompt: float = PROMPT_TOKENS) -> MemoryPlan:
    """The memory plan of `cfg` for the policies `roles` (a SOAR run: teacher and student; the
    retrain and evaluate stages: the student) on `devices`, each GPU's bytes ([]: none, the host's
    RAM holds everything; None: this machine's, as model.device allows). Placement: the teacher on
    the first GPU, the run's student on the second (the first when there is one), each Ray actor
    (parallel.gpus_per_worker > 0) on GPUs the driver does not hold, 1 / gpus_per_worker actors
    per GPU. A Ray cluster's actors (parallel.address) and CPU actors are not placed here."""
    named = visible_devices(cfg.model.device) if devices is None else [(f"cuda:{i}", b) for i, b in enumerate(devices)]
    gpu = bool(named)
    if not gpu:
        named = [("cpu", host_memory())]
    arch = architecture(cfg.model.name)
    if arch is None:
        return MemoryPlan((), {}, 1, notes=(f"model {cfg.model.name!r}: no config.json at hand, memory not planned",),
                          gpu=gpu)
    w = pick_dtype(cfg.model.dtype, torch.device("cuda" if gpu else "cpu")).itemsize

    def need(role, capacity):
        return model_memory(cfg, role, arch, bytes_per_param=w, capacity=capacity, prompt=prompt)

    pc, problems, notes = cfg.parallel, [], []
    placement = {role: named[min(k, len(named) - 1)][0] if gpu else "cpu" for k, role in enumerate(roles)}
    processes: dict[str, list[tuple[ModelMemory, ...]]] = {name: [] for name, _ in named}
    capacity = dict(named)
    driver = {}
    for role, device in placement.items():
        driver.setdefault(device, []).append(need(role, capacity[device]))
    for device, models in driver.items():
        processes[device].append(tuple(models))
    slots = 1
    if pc.backend == "ray" and "student" in roles:
        slots = pc.workers
        if pc.address is not None:
            notes.append(f"Ray cluster ({pc.address}): its {pc.workers} actors are not planned here; each needs "
                         f"{size(need('student', 0.0).peak)} besides a vLLM engine")
        elif pc.gpus_per_worker == 0 or not gpu:
            notes.append(f"{pc.workers} Ray CPU actors: each trains its own student on the host")
        else:
            free = [name for name, _ in named if name not in placement.values()] if pc.actor_gpus is None else \
                [f"cuda:{i}" for i in pc.actor_gpus if f"cuda:{i}" in capacity]
            per_gpu = max(1, int(1 / pc.gpus_per_worker)) if pc.gpus_per_worker < 1 else 1
            each = max(1, math.ceil(pc.gpus_per_worker))  # GPUs per actor; its student lives on the first
            places = [free[(k // per_gpu) * each] for k in range(pc.workers) if (k // per_gpu + 1) * each <= len(free)]
            if len(places) < pc.workers:
                problems.append(f"parallel: {pc.workers} Ray actors x {pc.gpus_per_worker} GPUs need "
                                f"{math.ceil(pc.workers / per_gpu) * each} GPUs besides the driver's "
                                f"{len(set(placement.values()))}, and {len(free)} are left: lower parallel.workers "
                                "or add GPUs")
            for k, device in enumerate(places):
                placement[f"actor {k}"] = device
                processes[device].append((need("student", capacity[device]),))
    if cfg.generation.backend == "vllm":
        for device, models in driver.items():
            for m in models:
                room = m.resident["vLLM engine"] - arch.params * w
                wanted = cfg.generation.max_model_len * arch.kv_bytes_per_token(w)
                if room < wanted:
                    problems.append(f"{m.role}'s vLLM engine on {device}: its share ({VLLM_GPU_MEMORY:.2f}, "
                                    f"SOAR_VLLM_GPU_MEMORY) leaves {size(room)} beside the weights for a KV cache "
                                    f"of at least one generation.max_model_len sequence ({size(wanted)})")
    unused = [name for name, _ in named if gpu and not processes[name]]
    if unused and "teacher" in roles:
        notes.append(f"unused: {', '.join(unused)} (parallel.backend: ray with gpus_per_worker: 1 trains inner loops "
                     "there)")
    return MemoryPlan(tuple(Device(name, capacity[name], tuple(processes[name])) for name, _ in named
                            if processes[name]), placement, slots, tuple(problems), tuple(notes), gpu)


def override(cfg, **sections):
    """cfg with some fields of some sections replaced: override(cfg, student={"micro_batch": 1})."""
    return replace(cfg, **{name: replace(getattr(cfg, name), **fields) for name, fields in sections.items()})


def _fullest(plan: MemoryPlan) -> tuple[int, float]:
    """How far a plan is from fitting: its problems, then its fullest device's need / usable bytes."""
    return len(plan.problems), max((d.need / (USABLE * d.capacity) for d in plan.devices), default=0.0)


def knob_steps(cfg, devices: Sequence[float], *, roles: Sequence[str] = ("teacher", "student"),
               prompt: float = PROMPT_TOKENS) -> list[tuple[str, object, list[float], MemoryPlan]]:
    """The knobs that shrink the plan, cheapest first (the same results, then slower, then more GPUs,
    then another method), each kept on top of those before when it brings the fullest device
    closer to fitting, until the plan fits: (what changed, config, devices, plan) per kept knob."""
    both = ("student", "teacher")

    def each(**fields):
        return lambda c: override(c, **{role: fields for role in both})

    candidates = [
        ("student/teacher gradient_checkpointing: true (same results, ~1/4 more training compute)",
         each(gradient_checkpointing=True), 0),
        ("student/teacher micro_batch: 1 (same results, slower)", each(micro_batch=1), 0),
        ("generation.batch_size: {} (same results, slower rollouts)",
         lambda c: override(c, generation={"batch_size": max(1, c.generation.batch_size // 2)}), 0),
        ("2 GPUs (teacher and student apart)", lambda c: c, 2),
        ("student/teacher adapter: lora (another method than the paper's full fine-tuning)", each(adapter="lora"), 0),
    ]
    steps, taken = [], set()
    plan, devices = memory_plan(cfg, devices, roles=roles, prompt=prompt), list(devices)
    # Each knob at most once, cheapest first; after a kept one, from the cheapest again: a knob that
    # did not help may help now (micro_batch, once the rollout's KV cache is no longer the peak).
    while not plan.fits:
        for k, (what, change, gpus) in enumerate(candidates):
            if k in taken or (gpus and len(devices) >= gpus):
                continue
            changed, devs = change(cfg), devices * gpus if gpus else devices
            new = memory_plan(changed, devs, roles=roles, prompt=prompt)
            if _fullest(new) < _fullest(plan):
                steps.append((what.format(changed.generation.batch_size), changed, devs, new))
                cfg, devices, plan = changed, devs, new
                taken.add(k)
                break
        else:
            return steps  # no knob left helps
    return steps


def fitting(cfg, devices: Sequence[float], *, roles: Sequence[str] = ("teacher", "student"),
            prompt: float = PROMPT_TOKENS):
    """cfg as set if its plan fits `devices`, else with the knobs of knob_steps: (config, devices,
    the knobs added). None when even all of them do not fit."""
    if memory_plan(cfg, devices, roles=roles, prompt=prompt).fits:
        return cfg, list(devices), []
    steps = knob_steps(cfg, devices, roles=roles, prompt=prompt)
    if not steps or not steps[-1][3].fits:
        return None
    return steps[-1][1], steps[-1][2], [what for what, *_ in steps]


def suggestions(cfg, devices: Sequence[float], *, roles: Sequence[str] = ("teacher", "student"),
                prompt: float = PROMPT_TOKENS) -> str:
    """knob_steps, re-planned, with what the fullest device then needs."""
    lines = ["Knobs that help, each on top of the ones above (re-planned):"]
    steps = knob_steps(cfg, devices, roles=roles, prompt=prompt)
    for what, _, _, plan in steps:
        worst = max(plan.devices, key=lambda d: d.need / d.capacity)
        lines.append(f"  + {what}: " + ("fits" if plan.fits else f"does not fit ({worst.name} needs {size(worst.need)})"))
    lora = "" if any("adapter: lora" in what for what, *_ in steps) else \
        "student/teacher adapter: lora (students share one frozen base; another method than the paper's), "
    lines.append(f"Other knobs: {lora}shorter completions (student.max_new_tokens, teacher.max_new_tokens), and with "
                 "vllm generation.max_model_len or SOAR_VLLM_GPU_MEMORY.")
    return "\n".join(lines)


def check_memory(cfg, *, roles: Sequence[str] = ("teacher", "student"), devices: Sequence[float] | None = None
                 ) -> MemoryPlan:
    """The plan for this machine, before any model loads (the notebooks call it first). On GPUs a
    layout that cannot fit raises MemoryPlanError with the plan and the knobs that would help; on
    the CPU it warns and the run goes on."""
    plan = memory_plan(cfg, devices, roles=roles)
    if not plan.fits:
        if plan.gpu:
            sizes = [d for _, d in visible_devices(cfg.model.device)] if devices is None else list(devices)
            raise MemoryPlanError(f"{plan.summary()}\n{suggestions(cfg, sizes, roles=roles)}")
        warnings.warn(f"{plan.summary()}\n(a CPU run goes on: the plan is an upper bound and the OS pages)", stacklevel=2)
    return plan
