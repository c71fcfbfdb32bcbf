"""A trainable policy with its frozen reference, and one RL update on sampled completions.

Teacher and students are both a `Policy`:
- `adapter="lora"`: a LoRA adapter on a frozen base; the reference (KL anchor) is the same
  model with the adapter switched off, so many students share one base in memory and a
  student's whole state is its adapter (megabytes). `students(seeds)` adds one adapter per
  student beside the policy's own, for batched students on one base.
- `adapter="full"`: a full copy of the base is trained (the paper's setting); the base itself is
  the reference.
`update` is the plumbing around soar.rl: pad prompt+completion pairs, take per-token log-probs
under the policy and the reference, and make one optimizer step on the RLOO loss.

Precision (bf16 on GPU). An AdamW step of about lr = 1e-5 (the paper's) is below half a bf16 ULP
of most weights, so a bf16 model stepped in place barely moves (measured on a tiny random Llama:
10 steps changed 15% of the weights, cosine 0.36 with the fp32 update). So every trained weight
has an fp32 master: forward and backward run in the model's dtype, each gradient is moved onto
its master as the backward makes it and accumulates there in fp32, the optimizer steps the
masters, and the model gets a rounded copy after each step. `parameters()` (what the optimizer
steps) and `state()` (what checkpoints and promotions save) are the masters. LoRA adapters are fp32 already (peft keeps them so: each adapter is its
own master). In fp32 (CPU) the masters are the weights themselves: no copy, the same results.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch

from soar import rl
from soar.models import add_lora, load_model, load_trainable_state

ADAPTER = "default"


class Policy:
    def __init__(self, base, tokenizer, *, adapter: str = "lora", lora_r: int = 16, lora_alpha: int = 32,
                 gradient_checkpointing: bool = False):
        if adapter not in ("lora", "full"):
            raise ValueError(f"adapter must be 'lora' or 'full', got {adapter!r}")
        self.tokenizer, self.adapter = tokenizer, adapter
        self.lora = (lora_r, lora_alpha)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        # The fp32 truth of the base where promotions changed a base stored in lower precision
        # (see merge); None while the base's own weights are exact.
        self._base32: dict[str, torch.Tensor] | None = None
        if adapter == "lora":
            self.model = add_lora(base, r=lora_r, alpha=lora_alpha)
            self._masters: dict[str, torch.Tensor] = {}  # adapters are fp32: their own masters
            _check_fp32_adapters(self.model)
        else:
            self.model = copy.deepcopy(base)
            # one vLLM engine serves the trained copy and its reference (soar.sampling)
            self.model.engine_key = self.base.engine_key = id(self)
            self._masters = {n: p.detach().float() for n, p in self.model.named_parameters()
                             if p.dtype != torch.float32}
            # each weight's gradient goes onto its master as soon as the backward has made it, so
            # that at most one low-precision gradient exists at a time (3B in bf16: 6 GiB less)
            for name, p in self.model.named_parameters():
                if name in self._masters:
                    p.requires_grad_(True)  # trained (reset); the copy took the base's False
                    p.register_post_accumulate_grad_hook(_onto_master(self._masters[name]))
        if gradient_checkpointing:  # the backward recomputes each layer from its input (memory: soar.budget)
            # transformers 5.23 (the CPU stack) calls it activation_checkpointing_enable; the GPU
            # environment's 5.17 (vLLM's bound: requirements-gpu.txt) has gradient_checkpointing_enable only
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._initial = None
        self.reset(seed=0)

    def reset(self, seed: int) -> None:
        """Back to the reference: a fresh adapter (seeded init; B = 0, so output = base) or a
        fresh copy of the base (its masters from the base's fp32 truth)."""
        if self.adapter == "lora":
            self._init_adapter(ADAPTER, seed)
        else:
            self.model.load_state_dict(self.base.state_dict())
            for p in self.model.parameters():
                p.requires_grad_(True)
            truth = self._base32 or dict(self.base.named_parameters())
            with torch.no_grad():
                for name, master in self._masters.items():
                    master.copy_(truth[name])
        self._changed()

    def _init_adapter(self, name: str, seed: int) -> None:
        """Seeded LoRA init of adapter `name` (B = 0, so its output is the base's)."""
        torch.manual_seed(seed % 2**32)
        for module in self.model.modules():
            if hasattr(module, "reset_lora_parameters") and name in getattr(module, "lora_A", {}):
                module.reset_lora_parameters(name, True)

    def _trained(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, weight) of what training changes now: the active adapter, or every weight."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def parameters(self) -> list[torch.Tensor]:
        """What the optimizer steps: the fp32 master of each trained weight (the weight itself
        when it is fp32)."""
        return [self._masters.get(n, p) for n, p in self._trained()]

    def state(self) -> dict[str, torch.Tensor]:
        """What training changed, in fp32 (the masters), on the CPU: the adapter, or every weight
        under full fine-tuning."""
        return {n: self._masters.get(n, p).detach().to("cpu", copy=True) for n, p in self._trained()}

    def compute_weights(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` (as state() gives it) as the model computes with it: each weight rounded to its
        dtype in the model, as load_state rounds it. Half the bytes where a full student is bf16
        (a GPU); the same tensors for LoRA adapters and fp32 models. Enough to evaluate or
        promote a student, not to train it further (that needs the masters)."""
        params = dict(self.model.named_parameters())
        return {n: t.to(params[n].dtype) for n, t in state.items()}

    @contextlib.contextmanager
    def students(self, seeds):
        """Batched students: one fresh LoRA adapter per seed beside the policy's own, on the same
        base, each initialised exactly as reset(seed) initialises the policy. Yields their names;
        `training(name)` makes one of them the trained one. Removed on exit."""
        if self.adapter != "lora":
            raise ValueError("LoRA students on one base need adapter: lora (batched full students: soar.stacked.Students)")
        names = [f"student{k}" for k in range(len(seeds))]
        config = self.model.peft_config[ADAPTER]
        try:
            for name, seed in zip(names, seeds):
                self.model.add_adapter(name, config)
                self._init_adapter(name, seed)  # the same draws as reset(seed)
            _check_fp32_adapters(self.model)
            yield names
        finally:
            self.model.set_adapter(ADAPTER)
            for name in names:
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)

    @contextlib.contextmanager
    def training(self, name: str):
        """Make adapter `name` the active and only trainable one (parameters(), update(), state())."""
        self.model.set_adapter(name)
        try:
            yield
        finally:
            self.model.set_adapter(ADAPTER)

    def student_state(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter `name`'s weights under the policy's own adapter names, as state() would give them."""
        with self.training(name):
            return {k.replace(f".{name}.", f".{ADAPTER}."): v for k, v in self.state().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Set the trained weights (and their masters) to `state`, as state() returned it."""
        load_trainable_state(self.model, state)  # the compute weights, rounded to the model's dtype
        with torch.no_grad():
            for name, master in self._masters.items():
                if name in state:
                    master.copy_(state[name])
        self._changed()

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference model, for KL and for 'before training' evaluations."""
        if self.adapter == "lora":
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.base

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        """Make `state` part of the reference (promotion): add the adapter's delta into the base
        weights, or copy full weights into the base. The policy is reset afterwards.

        A bf16 base cannot hold a small delta: most of it is below half a ULP and rounds away,
        and so again at every later promotion. So where the base is stored in lower precision,
        the merged weights are kept in fp32 beside it (self._base32, on the CPU: needed only at
        merges and resets) and the base holds their nearest bf16 values, as a model holds its
        masters' (the simplest correct choice: an unmerged promoted delta would have to be a
        second active adapter in every forward, batched students and vLLM request). LoRA: the
        merged layers' weights; full: the promoted student's masters themselves, so that the next
        fresh student starts from them exactly (reset). In fp32 nothing is kept: the base is exact.
        """
        self.load_state(state)
        with torch.no_grad():
            if self.adapter == "lora":
                for name, module in self.model.named_modules():
                    if hasattr(module, "get_delta_weight") and ADAPTER in getattr(module, "lora_A", {}):
                        weight = module.base_layer.weight
                        if weight.dtype == torch.float32:
                            weight += module.get_delta_weight(ADAPTER)
                            continue
                        if self._base32 is None:
                            self._base32 = {}
                        truth = self._base32.setdefault(name, weight.detach().to("cpu", torch.float32, copy=True))
                        truth += module.get_delta_weight(ADAPTER).to("cpu", torch.float32)
                        weight.copy_(truth)
            else:
                self.base.load_state_dict(self.model.state_dict())
                if self._masters:  # fp32 on the CPU already (state()): no copy
                    self._base32 = {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}
                self.base.weights_version = getattr(self.base, "weights_version", 0) + 1
        self.model.base_version = getattr(self.model, "base_version", 0) + 1  # a vLLM engine reloads it
        self.reset(seed=0)

    def stepped(self) -> None:
        """After an optimizer step on the masters: the compute weights take their new values."""
        with torch.no_grad():
            for name, p in self._trained():
                master = self._masters.get(name)
                if master is not None:
                    p.copy_(master)
        self._changed()

    def _changed(self) -> None:
        """The trained copy's weights changed: a vLLM engine holding them reloads (soar.sampling)."""
        self.model.weights_version = getattr(self.model, "weights_version", 0) + 1


def _onto_master(master: torch.Tensor):
    """A backward hook of a compute weight: add its gradient onto its fp32 master's, summed in fp32
    over micro-batches, and free it."""

    def hook(p: torch.Tensor) -> None:
        master.grad = p.grad.float() if master.grad is None else master.grad.add_(p.grad)
        p.grad = None

    return hook


def _check_fp32_adapters(model) -> None:
    """peft keeps LoRA adapters in fp32 on a bf16/fp16 base (autocast_adapter_dtype): they are
    their own master weights. A peft that stopped doing so would silently lose bf16 updates."""
    low = [n for n, p in model.named_parameters() if "lora_" in n and p.dtype != torch.float32]
    if low:
        raise TypeError(f"LoRA adapter weights are not fp32 ({low[0]}: ...); soar.policy expects peft to keep them so")


def load_policy(model_cfg, role) -> Policy:
    """A fresh Policy on its own copy of the base model; role: StudentConfig or TeacherConfig
    (adapter, lora_r, lora_alpha, gradient_checkpointing)."""
    base, tokenizer = load_model(model_cfg.name, dtype=model_cfg.dtype, device=model_cfg.device)
    return Policy(base, tokenizer, adapter=role.adapter, lora_r=role.lora_r, lora_alpha=role.lora_alpha,
                  gradient_checkpointing=role.gradient_checkpointing)


def make_optimizer(policy: Policy, *, lr: float, warmup_steps: int, total_steps: int):
    """AdamW on the policy's fp32 masters, with linear warmup then cosine decay to 0 (paper:
    AdamW, cosine). Fused on CUDA: one kernel per step, and no temporary the size of the trained
    weights (the foreach default makes one: 12 GiB for a 3B model's fp32 masters, the peak of a
    full fine-tuning step on 80 GB, soar.budget.model_memory); elsewhere torch's default."""
    params = list(policy.parameters())
    fused = True if params and all(p.is_cuda for p in params) else None
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _pad(samples, pad_id: int, device):
    """Right-padded prompt+completion ids, attention mask and completion mask (B, T)."""
    seqs = [list(s.prompt_ids) + list(s.completion_ids) for s in samples]
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.float32)
    for b, (s, x) in enumerate(zip(samples, seqs)):
        ids[b, : len(x)] = torch.tensor(x)
        attn[b, : len(x)] = 1
        comp[b, len(s.prompt_ids) : len(x)] = 1
    return ids.to(device), attn.to(device), comp.to(device)


def _logps(model, ids, attn) -> torch.Tensor:
    """Per-token log-probs of ids[:, 1:] given the prefix: (B, T-1)."""
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]  # (B, T-1, V); no KV cache to keep
    return rl.token_logps(logits, ids[:, 1:])


def update(policy: Policy, optimizer, scheduler, samples, advantages: torch.Tensor, *, kl_coef: float,
           max_grad_norm: float, micro_batch: int = 4) -> dict[str, float]:
    """One RLOO step on `samples` (with advantages (B,)), token-normalized over the whole batch
    even when split into micro-batches (each micro loss is scaled by its token share). Forward and
    backward in the model's dtype, the step on the fp32 masters (module docstring).
    micro_batch 4 bounds memory (the (B, T, V) logits; 16 took 2.5x the peak RSS on CPU, same speed)."""
    device = next(policy.model.parameters()).device
    pad = policy.tokenizer.pad_token_id
    total_tokens = sum(len(s.completion_ids) for s in samples)
    if total_tokens == 0:
        return {"loss": 0.0, "num_tokens": 0}
    policy.model.train()
    optimizer.zero_grad(set_to_none=True)
    stats: dict[str, float] = {}
    for i in range(0, len(samples), micro_batch):
        chunk = samples[i : i + micro_batch]
        ids, attn, comp = _pad(chunk, pad, device)
        mask = comp[:, 1:]  # (B, T-1): positions predicting completion tokens
        with torch.no_grad(), policy.reference() as ref:
            ref_logps = _logps(ref, ids, attn)  # (B, T-1)
        logps = _logps(policy.model, ids, attn)  # (B, T-1)
        loss, s = rl.policy_gradient_loss(logps, advantages[i : i + micro_batch].to(device), mask,
                                          ref_logps=ref_logps, kl_coef=kl_coef, normalize="token")
        share = mask.sum().item() / total_tokens
        (loss * share).backward()  # each gradient onto its fp32 master as it is made (_onto_master)
        for k, v in s.items():
            stats[k] = stats.get(k, 0.0) + v * share
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # gradients are not kept between steps (memory)
    policy.stepped()  # the masters' new values into the compute weights
    scheduler.step()
    stats["lr"] = scheduler.get_last_lr()[0]
    return stats
