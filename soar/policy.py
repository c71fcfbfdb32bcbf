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
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch

from soar import rl
from soar.models import add_lora, load_model, load_trainable_state, trainable_state

ADAPTER = "default"


class Policy:
    def __init__(self, base, tokenizer, *, adapter: str = "lora", lora_r: int = 16, lora_alpha: int = 32):
        if adapter not in ("lora", "full"):
            raise ValueError(f"adapter must be 'lora' or 'full', got {adapter!r}")
        self.tokenizer, self.adapter = tokenizer, adapter
        self.lora = (lora_r, lora_alpha)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.model = add_lora(base, r=lora_r, alpha=lora_alpha) if adapter == "lora" else copy.deepcopy(base)
        self._initial = None
        self.reset(seed=0)

    def reset(self, seed: int) -> None:
        """Back to the reference: a fresh adapter (seeded init; B = 0, so output = base) or a
        fresh copy of the base."""
        if self.adapter == "lora":
            self._init_adapter(ADAPTER, seed)
        else:
            self.model.load_state_dict(self.base.state_dict())
            for p in self.model.parameters():
                p.requires_grad_(True)

    def _init_adapter(self, name: str, seed: int) -> None:
        """Seeded LoRA init of adapter `name` (B = 0, so its output is the base's)."""
        torch.manual_seed(seed % 2**32)
        for module in self.model.modules():
            if hasattr(module, "reset_lora_parameters") and name in getattr(module, "lora_A", {}):
                module.reset_lora_parameters(name, True)

    def state(self) -> dict[str, torch.Tensor]:
        """What training changed: the adapter, or every weight under full fine-tuning."""
        return trainable_state(self.model)

    @contextlib.contextmanager
    def students(self, seeds):
        """Batched students: one fresh LoRA adapter per seed beside the policy's own, on the same
        base, each initialised exactly as reset(seed) initialises the policy. Yields their names;
        `training(name)` makes one of them the trained one. Removed on exit."""
        if self.adapter != "lora":
            raise ValueError("batched students need adapter: lora (full fine-tuning has one model per student)")
        names = [f"student{k}" for k in range(len(seeds))]
        config = self.model.peft_config[ADAPTER]
        try:
            for name, seed in zip(names, seeds):
                self.model.add_adapter(name, config)
                self._init_adapter(name, seed)  # the same draws as reset(seed)
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
        load_trainable_state(self.model, state)

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
        weights, or copy full weights into the base. The policy is reset afterwards."""
        if self.adapter == "lora":
            self.load_state(state)
            with torch.no_grad():
                for module in self.model.modules():
                    if hasattr(module, "get_delta_weight") and ADAPTER in getattr(module, "lora_A", {}):
                        module.base_layer.weight += module.get_delta_weight(ADAPTER)
        else:
            self.load_state(state)
            self.base.load_state_dict(self.model.state_dict())
        self.model.base_version = getattr(self.model, "base_version", 0) + 1  # a vLLM engine reloads it
        self.reset(seed=0)

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]


def load_policy(model_cfg, role) -> Policy:
    """A fresh Policy on its own copy of the base model; role: StudentConfig or TeacherConfig
    (adapter, lora_r, lora_alpha)."""
    base, tokenizer = load_model(model_cfg.name, dtype=model_cfg.dtype, device=model_cfg.device)
    return Policy(base, tokenizer, adapter=role.adapter, lora_r=role.lora_r, lora_alpha=role.lora_alpha)


def make_optimizer(policy: Policy, *, lr: float, warmup_steps: int, total_steps: int):
    """AdamW with linear warmup then cosine decay to 0 (paper: AdamW, cosine)."""
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)

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
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (B, T-1, V)
    return rl.token_logps(logits, ids[:, 1:])


def update(policy: Policy, optimizer, scheduler, samples, advantages: torch.Tensor, *, kl_coef: float,
           max_grad_norm: float, micro_batch: int = 4) -> dict[str, float]:
    """One RLOO step on `samples` (with advantages (B,)), token-normalized over the whole batch
    even when split into micro-batches (each micro loss is scaled by its token share).
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
        (loss * share).backward()
        for k, v in s.items():
            stats[k] = stats.get(k, 0.0) + v * share
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm))
    optimizer.step()
    scheduler.step()
    stats["lr"] = scheduler.get_last_lr()[0]
    return stats
