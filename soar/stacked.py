"""Several full fine-tuned students of one small Llama as one batched computation: `Students`.

Owns K copies of a LlamaForCausalLM's weights stacked into tensors [K, ...] (each slice is one
student's fp32 master) and a pure-torch Llama forward over them: the computation of transformers'
Llama (embedding, RMSNorm, RoPE, attention by scaled_dot_product_attention with the students
folded into the batch, SwiGLU MLP, tied lm_head), each linear layer one bmm over the students.
On it, what an inner loop needs of its students (soar.student.train_students, student.adapter
full, parallel.batch_students > 1):
- `generate`: soar.sampling.generate's samples (the same per-sample seeds and Gumbel noise), all
  students' prompts in one KV-cached decode; soar.sampling.generate hands a Students model here,
  with `adapters` naming each prompt's student (its index);
- `update`: soar.policy.update for every student in one forward and one backward (the sum of the
  students' losses: no gradient crosses students), each student clipped by its own gradient norm;
  AdamW is elementwise, so one AdamW (soar.policy.make_optimizer) over the stack is K AdamWs;
- `state(k)`: student k as Policy.state() gives it (loads into the HF model).
Why not torch.func.vmap over the HF model: on the CPU it has no batching rule for SDPA (slow, and
wrong where it falls back). Why faster than K students one after another: the world's student is
so small (~1M parameters, ~20 tokens) that one student's step is mostly per-operation overhead;
and each question's prompt goes through the model once, its n answers attending to its keys and
values, in the update too (soar.policy.update recomputes the prompt for every answer).
Weights are fp32 (the CPU world: each student is its own master). dtype=torch.bfloat16 runs the
matmuls in bf16 (the weights cast once per forward, differentiably: the gradients reach the fp32
stacks, where one fp32 AdamW steps them); the residual stream, norms, attention (its bf16 backward
ran 10x slower on the CPU), logits and log-probs stay fp32. Setting .dtype back to float32 makes
the same students answer in fp32 (soar.student.train_students does, before they are scored).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from soar import rl
from soar.data import seed_from
from soar.sampling import Sample, encode_prompts, eos_ids, sample_tokens


class Students:
    """K students of `model`'s architecture, each starting from `model`'s weights (fresh copies of
    the baseline). trainable: the stack takes gradients (False: a frozen reference for the KL)."""

    batched_students = True  # soar.sampling.generate hands a model with this flag to its own `generate`

    def __init__(self, model, count: int, *, trainable: bool = True, dtype: torch.dtype = torch.float32):
        _check(model)
        self.dtype = dtype  # the matmuls' (weights cast per forward); residual stream, norms, attention, logits: fp32
        cfg = model.config
        self.count, self.layers, self.heads, self.eps = count, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.rms_norm_eps
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        rotary = model.model.rotary_emb  # its inverse frequencies and scaling: RoPE exactly as the model's
        self.inv_freq, self.rope_scale = rotary.inv_freq.float(), rotary.attention_scaling
        self.generation_config = model.generation_config  # its EOS ids (soar.sampling.eos_ids)
        self.pad = cfg.pad_token_id or 0
        self.padding_idx = model.model.embed_tokens.padding_idx  # HF Llama: the pad id; its row is frozen as an input
        self.weights = {n: p.detach()[None].repeat(count, *[1] * p.dim()).requires_grad_(trainable)
                        for n, p in model.named_parameters()}  # HF names, so state(k) loads as Policy.state()
        self.device = self.inv_freq.device

    def parameters(self) -> list[torch.Tensor]:
        """What the optimizer steps (make_optimizer): every stacked weight."""
        return list(self.weights.values())

    def state(self, k: int) -> dict[str, torch.Tensor]:
        """Student k's weights as Policy.state() gives a full student's: fp32, on the CPU."""
        return {n: w[k].detach().to("cpu", copy=True) for n, w in self.weights.items()}

    # --- the forward ---------------------------------------------------------------------------

    def compute_weights(self) -> dict[str, torch.Tensor]:
        """The matrices in the compute dtype (a differentiable cast: their gradients reach the fp32
        stacks), cast once per forward pass or decode."""
        return {n: w.to(self.dtype) if w.dim() == 3 and n != "model.embed_tokens.weight" else w
                for n, w in self.weights.items()}

    def _linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [K, R, T, in] @ w[k]^T for each student k: one bmm. -> [K, R, T, out]"""
        K, R, T, _ = x.shape
        return torch.bmm(x.reshape(K, R * T, -1), w.transpose(1, 2)).view(K, R, T, -1)

    def _norm(self, x: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
        """LlamaRMSNorm (fp32), each student with its own weight; -> dtype."""
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weights[name][:, None, None, :] * x).to(dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """transformers' apply_rotary_pos_emb on x [K*R, H, T, D]."""
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    def hidden(self, ids: torch.Tensor, pos: torch.Tensor, attend: torch.Tensor, cache: "KV",
               w: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Final-norm hidden states [K, R, T, hidden] (fp32) of tokens ids [K, R, T] (row r of student k)
        at positions pos [K, R, T]; attend [K*R, 1, T, L] (True: attend) over the L keys of the cache's
        earlier tokens and these, which the cache is extended by; w: compute_weights() (a forward
        pass's, cast once)."""
        w = w if w is not None else self.compute_weights()
        K, R, T = ids.shape
        H, D, dt = self.heads, self.head_dim, self.dtype
        embed = self.weights["model.embed_tokens.weight"]  # [K, V, hidden]
        offset = torch.arange(K, device=ids.device)[:, None, None] * embed.shape[1]  # student k's rows of the flat table
        x = F.embedding(ids + offset, embed.reshape(-1, embed.shape[-1]))  # [K, R, T, hidden]
        if self.padding_idx is not None:  # nn.Embedding(padding_idx=): a sampled pad token's input row gets no gradient
            x = torch.where((ids == self.padding_idx)[..., None], x.detach(), x)
        freqs = pos[..., None].float() * self.inv_freq  # LlamaRotaryEmbedding, per position
        emb = torch.cat((freqs, freqs), -1).reshape(K * R, 1, T, D)
        cos, sin = emb.cos() * self.rope_scale, emb.sin() * self.rope_scale
        for i in range(self.layers):
            p = f"model.layers.{i}."
            h = self._norm(x, p + "input_layernorm.weight", dt)
            # each [K*R, H, T, D]: the students folded into the batch; attention in fp32 (its backward
            # in bf16 ran 10x slower on the CPU, and its FLOPs are few)
            q, k, v = (self._linear(h, w[f"{p}self_attn.{n}_proj.weight"]).float().reshape(K * R, T, H, D).transpose(1, 2)
                       for n in "qkv")
            keys, values = cache.extend(i, self._rope(k, cos, sin), v)
            a = F.scaled_dot_product_attention(self._rope(q, cos, sin), keys, values, attn_mask=attend, scale=D**-0.5)
            x = x + self._linear(a.transpose(1, 2).reshape(K, R, T, H * D).to(dt), w[p + "self_attn.o_proj.weight"]).float()
            h = self._norm(x, p + "post_attention_layernorm.weight", dt)
            gate, up = self._linear(h, w[p + "mlp.gate_proj.weight"]), self._linear(h, w[p + "mlp.up_proj.weight"])
            x = x + self._linear(F.silu(gate) * up, w[p + "mlp.down_proj.weight"]).float()
        return self._norm(x, "model.norm.weight", torch.float32)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """lm_head of hidden states [K, R, T, hidden] -> [K, R, T, V] (tied: the embedding)."""
        head = self.weights.get("lm_head.weight", self.weights["model.embed_tokens.weight"])
        K, R, T, _ = h.shape
        return torch.bmm(h.reshape(K, R * T, -1), head.transpose(1, 2)).view(K, R, T, -1)

    def _prompts(self, prompts: Sequence[Sequence[int]], cache: "KV", w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Run K*Q prompts (student-major) left-padded, as soar.sampling's prefill: positions count
        from each prompt's first token. -> (last position's logits [K*Q, V], its position [K*Q],
        key mask [K*Q, P])."""
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        valid = torch.zeros((len(prompts), width), dtype=torch.bool)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):], valid[r, width - len(p):] = torch.tensor(p, dtype=torch.long), True
        ids, valid = ids.to(self.device), valid.to(self.device)
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        # a padding query sees itself too: no row without keys (NaN), and real rows never see padding
        attend = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=self.device)
        shape = (self.count, len(prompts) // self.count, width)
        h = self.hidden(ids.view(shape), pos.view(shape), attend[:, None], cache, w)
        return self.logits(h[:, :, -1:]).reshape(len(prompts), -1), pos[:, -1], valid

    # --- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, tokenizer, prompts: Sequence, *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float, keys: Sequence[tuple[int, ...]], students: Sequence[int], stop: Sequence[str] = ()
                 ) -> list[list[Sample]]:
        """soar.sampling.generate (hf backend) with prompt i answered by student students[i]: sample j
        of prompt i draws with seed_from(*keys[i], j), so each student samples what it would alone
        (up to float round-off). Every student answers as many prompts (the inner loop's sizes).
        One batch, no compaction: finished rows decode on (their tokens are dropped) until all end."""
        if stop:
            raise ValueError("batched full students do not take stop strings (the inner loop has none)")
        if students is None or len(students) != len(prompts):
            raise ValueError("batched full students need the student (an index) of every prompt")
        own = [[i for i, s in enumerate(students) if s == k] for k in range(self.count)]
        if len({len(o) for o in own}) != 1 or set(students) - set(range(self.count)):
            raise ValueError(f"each of the {self.count} students must answer as many prompts")
        order = [i for o in own for i in o]  # prompt of each (student, question) row, student-major
        prompt_ids = encode_prompts(tokenizer, prompts)
        rows, width = len(order) * n, max(len(prompt_ids[i]) for i in order)
        cache, w = KV(self.layers, capacity=width + max_new_tokens), self.compute_weights()
        logits, last, valid = self._prompts([prompt_ids[i] for i in order], cache, w)
        fan = torch.arange(len(order), device=self.device).repeat_interleave(n)  # one prefill per prompt, n answers
        cache.select(fan)
        logits, next_pos = logits[fan], last[fan] + 1
        attend = torch.ones((rows, width + max_new_tokens), dtype=torch.bool, device=self.device)
        attend[:, :width] = valid[fan]
        seeds = torch.tensor([seed_from(*keys[order[r // n]], r % n) for r in range(rows)], device=self.device)
        eos = torch.tensor(sorted(eos_ids(self, tokenizer)), device=self.device)
        tokens = torch.zeros((rows, max_new_tokens), dtype=torch.long, device=self.device)
        ended = torch.zeros(rows, dtype=torch.bool, device=self.device)
        shape = (self.count, rows // self.count, 1)
        for t in range(max_new_tokens):
            tokens[:, t] = sample_tokens(logits, temperature, top_p, seeds, t)
            ended |= torch.isin(tokens[:, t], eos)
            if t == max_new_tokens - 1 or bool(ended.all()):
                break
            h = self.hidden(tokens[:, t].view(shape), next_pos.view(shape), attend[:, None, None, : width + t + 1], cache, w)
            logits, next_pos = self.logits(h).reshape(rows, -1), next_pos + 1
        out: list[list[Sample]] = [[None] * n for _ in prompts]
        eos_set = set(eos.tolist())
        for r, row in enumerate(tokens[:, : t + 1].tolist()):
            stop_at = next((c + 1 for c, tok in enumerate(row) if tok in eos_set), None)  # up to and with EOS
            toks = row[:stop_at]
            i = order[r // n]
            out[i][r % n] = Sample(i, r % n, tuple(prompt_ids[i]), tuple(toks),
                                   tokenizer.decode(toks, skip_special_tokens=True), stop_at is not None)
        return out

    # --- the update ----------------------------------------------------------------------------

    def logps(self, samples: Sequence[Sequence[Sample]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs [K, R, C] of each completion's tokens (samples[k]: student k's R samples) under
        its student, and their mask [K, R, C]: soar.policy._logps on the completion positions,
        with each distinct prompt of a student run once (its answers attend to its keys)."""
        K, R = self.count, len(samples[0])
        if len(samples) != K or any(len(s) != R for s in samples):
            raise ValueError(f"{K} students need as many samples each, got {[len(s) for s in samples]}")
        distinct = [list(dict.fromkeys(s.prompt_ids for s in own)) for own in samples]
        Q = max(map(len, distinct))
        # a student with fewer distinct prompts repeats its first (a row nobody reads)
        cache, w = KV(self.layers), self.compute_weights()
        first, last, valid = self._prompts([p for d in distinct for p in d + d[:1] * (Q - len(d))], cache, w)
        index = {(k, p): k * Q + q for k, d in enumerate(distinct) for q, p in enumerate(d)}
        fan = torch.tensor([index[k, s.prompt_ids] for k, own in enumerate(samples) for s in own], device=self.device)
        C = max(len(s.completion_ids) for own in samples for s in own)
        comp = torch.full((K * R, C), self.pad, dtype=torch.long)
        mask = torch.zeros((K * R, C))
        for r, s in enumerate(x for own in samples for x in own):
            comp[r, : len(s.completion_ids)], mask[r, : len(s.completion_ids)] = torch.tensor(s.completion_ids), 1
        comp, mask = comp.to(self.device), mask.to(self.device)
        logits = first[fan][:, None]  # [K*R, 1, V]: the prompt's last position predicts token 0
        if C > 1:  # completion tokens 0..C-2 predict tokens 1..C-1, after their prompt's keys
            cache.select(fan)
            attend = torch.cat((valid[fan][:, None, :].expand(-1, C - 1, -1),
                                torch.ones(C - 1, C - 1, dtype=torch.bool, device=self.device).tril().expand(K * R, -1, -1)), -1)
            h = self.hidden(comp[:, :-1].view(K, R, C - 1), (last[fan][:, None] + 1 + torch.arange(C - 1, device=self.device)).view(K, R, C - 1),
                            attend[:, None], cache, w)
            logits = torch.cat((logits, self.logits(h).reshape(K * R, C - 1, -1)), 1)
        logps = rl.token_logps(logits.reshape(1, K * R * C, -1), comp.reshape(1, -1))  # one row: no per-sequence loop
        return logps.view(K, R, C), mask.view(K, R, C)

    def update(self, optimizer, scheduler, samples: Sequence[Sequence[Sample]], advantages: Sequence[torch.Tensor], *,
               kl_coef: float, max_grad_norm: float, reference: "Students | None" = None) -> list[dict[str, float]]:
        """soar.policy.update of each student k on (samples[k], advantages[k] (R,)), as one backward
        of the sum of their losses; each student clipped to max_grad_norm by its own norm. The
        whole batch at once (micro_batch does not apply: the world's batch is small). reference:
        the frozen baseline (Students(base, K, trainable=False)) for kl_coef > 0. -> stats per student."""
        logps, mask = self.logps(samples)
        if (mask.sum((1, 2)) == 0).any():
            raise ValueError("a student has no completion tokens (update would skip its step)")
        ref = None
        if kl_coef:
            if reference is None:
                raise ValueError(f"kl_coef={kl_coef} needs the reference students")
            with torch.no_grad():
                ref = reference.logps(samples)[0]
        optimizer.zero_grad(set_to_none=True)
        losses, stats = [], []
        for k in range(self.count):
            loss, s = rl.policy_gradient_loss(logps[k], advantages[k].to(self.device), mask[k],
                                              ref_logps=None if ref is None else ref[k], kl_coef=kl_coef, normalize="token")
            losses.append(loss)
            stats.append(s)
        torch.stack(losses).sum().backward()
        norms = self._clip(max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return [{**s, "grad_norm": float(norm), "lr": scheduler.get_last_lr()[0]} for s, norm in zip(stats, norms.tolist())]

    def _clip(self, max_norm: float) -> torch.Tensor:
        """clip_grad_norm_ per student: student k's gradient (its slice of every stack) scaled by
        min(1, max_norm / (its norm + 1e-6)), as torch scales one model's. -> the norms [K]."""
        grads = [w.grad for w in self.weights.values()]
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # [K]
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
        return norms


class KV:
    """Keys and values per layer of the tokens seen so far, [rows, H, L, D]: grown by concatenation
    (the update: in the autograd graph) or written in place into buffers of `capacity` positions
    (decoding: no copy of the whole cache per token)."""

    def __init__(self, layers: int, capacity: int | None = None):
        self.keys: list = [None] * layers
        self.values: list = [None] * layers
        self.lengths, self.capacity = [0] * layers, capacity

    def extend(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append layer i's keys and values of new tokens; -> all of that layer's so far."""
        end = self.lengths[i] + k.shape[2]
        if self.capacity is None:
            if self.keys[i] is not None:
                k, v = torch.cat((self.keys[i], k), 2), torch.cat((self.values[i], v), 2)
            self.keys[i], self.values[i], self.lengths[i] = k, v, end
            return k, v
        if self.keys[i] is None:
            self.keys[i] = k.new_empty(*k.shape[:2], self.capacity, k.shape[3])
            self.values[i] = v.new_empty(*v.shape[:2], self.capacity, v.shape[3])
        self.keys[i][:, :, self.lengths[i] : end], self.values[i][:, :, self.lengths[i] : end] = k, v
        self.lengths[i] = end
        return self.keys[i][:, :, :end], self.values[i][:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Row r becomes the cache of rows[r] (a prompt's keys for each of its answers)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def _check(model) -> None:
    """The architecture this forward reproduces, or a clear refusal."""
    cfg = model.config
    problems = [what for what, bad in (
        ("a Llama model", cfg.model_type != "llama"),
        ("fp32 weights (batched full students are the CPU world's)", any(p.dtype != torch.float32 for p in model.parameters())),
        ("no attention or MLP biases", getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False)),
        ("SiLU", cfg.hidden_act != "silu"),
        ("as many key-value heads as heads", (cfg.num_key_value_heads or cfg.num_attention_heads) != cfg.num_attention_heads),
        ("default RoPE", getattr(model.model.rotary_emb, "rope_type", "default") != "default"),
    ) if bad]
    if problems:
        raise ValueError(f"batched full students need {', '.join(problems)}")
