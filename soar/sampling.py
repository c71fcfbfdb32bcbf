"""Batched sampling of n completions for many prompts: `generate(...)`.

The only module that imports vLLM (optional GPU extra, `backend="vllm"`). The default backend is
a plain KV-cached decode loop on Hugging Face forward passes, written out here rather than
`model.generate` because it gives us, for the same code on CPU and GPU:
- per-sample seeds: sample (i, j) has the seed seed_from(*keys[i], j), and its t-th token is the
  Gumbel-max of its logits with noise that is a pure hash of (seed, t, token id)
  (`gumbel_noise`). So a completion depends on its seed and its own context only, not on which
  other prompts share its batch (up to float round-off from padding), which makes executors and
  resumed runs agree;
- sampling on the device (noise, top-p, argmax are tensor ops): a decode step copies only the
  sampled token ids to the host, for the EOS and stop-string checks;
- one prefill per distinct prompt, shared by its n samples (the KV cache is gathered);
- a KV cache allocated once per batch, for the prompt and every new token (`_PreallocatedLayer`):
  a step writes its column in place instead of copying the whole cache to grow it;
- mixed LoRA adapters in one batch (peft `adapter_names`): each prompt names the adapter that
  answers it, so several students on one base decode together (batched students);
- finished rows leave the batch (the batch is compacted once half of it has finished), so long
  stragglers do not pay for short answers;
- stop strings and a progress bar with tokens/s.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm  # plain bars: readable in papermill records, no ipywidgets needed
from transformers.cache_utils import Cache, DynamicLayer

from soar.config import GenerationConfig
from soar.data import seed_from


@dataclass(frozen=True)
class Sample:
    prompt_index: int
    sample_index: int
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]  # includes the EOS token when the model stopped by itself
    text: str  # decoded completion, special tokens removed, cut after a stop string
    finished: bool  # False when max_new_tokens cut it off


def encode_prompts(tokenizer, prompts: Sequence) -> list[list[int]]:
    """Token ids of each prompt: chat message lists get the chat template, strings are encoded."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(tokenizer(p, add_special_tokens=False)["input_ids"])
        elif p and isinstance(p[0], dict):
            # a fixed date (the Llama-3 templates' own fallback): they otherwise write today's into the
            # system turn ("Today Date"), so prompts, the fail@k set and resumes changed by the day
            ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, date_string="26 Jul 2024")
            out.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
        else:
            out.append(list(p))
    return out


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer is not None else set()
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
    return {i for i in ids if i is not None}


# --- seeded sampling on the device ------------------------------------------------------------
# Counter-based noise (as Philox or JAX's PRNG): the noise of a token is a hash of (seed,
# position, token id), so no generator state is carried and none depends on the batch. The hash
# is integer arithmetic in torch ops (wrapping multiplies; torch's right shift of a signed integer
# is arithmetic, so every shift is masked to make it logical), the same on every device:
# splitmix64 (Steele et al. 2014) mixes (seed, position) into a row key, and murmur3's 32-bit
# finalizer mixes key ^ token code for the (B, V) part, at half the memory traffic of 64 bits.

def _signed(value: int, bits: int) -> int:
    """The two's-complement value of an unsigned `bits`-bit constant (torch has no uint64 ops)."""
    value %= 1 << bits
    return value - (1 << bits) if value >> (bits - 1) else value


_GAMMA64 = 0x9E3779B97F4A7C15  # splitmix64's increment (odd): position t advances the state by t * gamma
_MIX64 = (_signed(0xBF58476D1CE4E5B9, 64), _signed(0x94D049BB133111EB, 64))
_GAMMA32 = _signed(0x9E3779B9, 32)  # odd: token id -> code is a bijection of 32-bit integers
_MIX32 = (_signed(0x85EBCA6B, 32), _signed(0xC2B2AE35, 32))


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _MIX64[0]
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _MIX64[1]
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def _fmix32_(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finalizer, in place on int32 (a bijection: distinct inputs stay distinct)."""
    h ^= (h >> 16) & 0xFFFF
    h *= _MIX32[0]
    h ^= (h >> 13) & 0x7FFFF
    h *= _MIX32[1]
    h ^= (h >> 16) & 0xFFFF
    return h


def gumbel_noise(seeds: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise (B, vocab) float32 on seeds' device: row b, token v is a pure function
    of (seeds[b], position, v). seeds: (B,) int64."""
    state = seeds + _signed(position * _GAMMA64, 64)
    key = (_splitmix64(state) >> 32).to(torch.int32)  # the high half: a signed 32-bit value, exact
    codes = torch.arange(vocab, dtype=torch.int32, device=seeds.device) * _GAMMA32
    h = _fmix32_(key[:, None] ^ codes)
    # 23 bits -> u = (2x + 1) / 2^24, exact in float32 and strictly inside (0, 1): the noise is finite
    u = ((h >> 9) & ((1 << 23) - 1)).float().mul_(2).add_(1).mul_(2.0**-24)
    return u.log_().neg_().log_().neg_()


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, seeds: torch.Tensor,
                  position: int) -> torch.Tensor:
    """One token per row, on the logits' device: argmax at temperature 0, else the Gumbel-max of
    logits / temperature (restricted to the top-p nucleus), which draws from their softmax.
    logits: (B, V); seeds: (B,) int64, row b's sample seed; position: the token's index in the
    completion. -> (B,)"""
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_p < 1.0:
        # the smallest prefix of the sorted tokens with mass >= top_p; the rest can never win the
        # argmax, so the draw is from the renormalized nucleus (stable sort: ties by token id)
        sorted_scores, order = scores.sort(dim=-1, descending=True, stable=True)
        p = sorted_scores.softmax(-1)
        drop = p.cumsum(-1) - p > top_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return scores.add_(gumbel_noise(seeds, position, scores.shape[-1])).argmax(-1)


class _PreallocatedLayer(DynamicLayer):
    """One layer's KV cache in buffers allocated at the first update for `capacity` positions;
    keys and values are views of the filled part. A decode step writes its column in place, where
    a DynamicLayer concatenates, copying the whole cache every token. A view of the filled part
    (rather than transformers' StaticLayer, which attends over all `capacity` columns every step)
    keeps attention and its mask as long as the text so far."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            b, h, _, _ = key_states.shape
            self._k = key_states.new_empty(b, h, self.capacity, key_states.shape[-1])
            self._v = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
            self.length, self.is_initialized = 0, True
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]


@torch.no_grad()
def _decode_batch(model, tokenizer, prompt_ids, jobs, *, max_new_tokens, temperature, top_p, stop, keys, eos,
                  adapters=None):
    """Decode one batch of (prompt_index, sample_index) jobs; returns {job: (ids, finished)}.
    keys[i]: prompt i's seed key; adapters[i]: the LoRA adapter answering prompt i (or None)."""
    device = next(model.parameters()).device
    unique = sorted({i for i, _ in jobs})
    row_of = {i: r for r, i in enumerate(unique)}
    width = max(len(prompt_ids[i]) for i in unique)
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(unique), width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((len(unique), width), dtype=torch.long)
    for r, i in enumerate(unique):  # left padding: every row ends at the same column
        p = prompt_ids[i]
        ids[r, width - len(p):] = torch.tensor(p)
        prompt_mask[r, width - len(p):] = 1
    ids, prompt_mask = ids.to(device), prompt_mask.to(device)
    pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    cache = Cache(layers=[_PreallocatedLayer(width + max_new_tokens) for _ in range(model.config.num_hidden_layers)])

    def mixed(indices):  # peft's mixed-adapter batch: one adapter name per row
        return {} if adapters is None else {"adapter_names": [adapters[i] for i in indices]}

    out = model(input_ids=ids, attention_mask=prompt_mask, position_ids=pos, past_key_values=cache,
                use_cache=True, logits_to_keep=1, **mixed(unique))
    # One prefill per distinct prompt; fan the cache out to its samples.
    select = torch.tensor([row_of[i] for i, _ in jobs], device=device)
    cache.batch_select_indices(select)
    logits = out.logits[select, -1, :]  # (B, V)
    attn = torch.ones((len(jobs), width + max_new_tokens), dtype=torch.long, device=device)
    attn[:, :width] = prompt_mask[select]  # the prompt's padding, then every new token
    next_pos = pos[select, -1] + 1  # (B,)
    seeds = torch.tensor([seed_from(*keys[i], j) for i, j in jobs], device=device)
    rows = list(range(len(jobs)))  # the job of each batch row; finished rows stay until a compaction
    tokens: list[list[int]] = [[] for _ in jobs]
    finished = [False] * len(jobs)
    max_stop = max((len(s) for s in stop), default=0)
    for t in range(max_new_tokens):
        nxt = sample_tokens(logits, temperature, top_p, seeds, t)  # (B,)
        alive = []  # batch rows still decoding
        for row, (a, tok) in enumerate(zip(rows, nxt.tolist())):  # the step's one device -> host copy
            if finished[a]:
                continue
            tokens[a].append(tok)
            done = tok in eos
            if not done and stop:  # decode only the tail: stop strings are short
                tail = tokenizer.decode(tokens[a][-(max_stop + 8):], skip_special_tokens=True)
                done = any(s in tail for s in stop)
            finished[a] = done
            if not done:
                alive.append(row)
        if not alive or t == max_new_tokens - 1:
            break
        # Finished rows leave the batch once they are half of it: a compaction copies the whole
        # cache, so doing it at every finish would cost a copy per finished row; at half, each
        # copy is at most half the last one (at most twice the cache in all) and a finished row
        # is decoded for nothing at most until then.
        if 2 * len(alive) <= len(rows):
            k = torch.tensor(alive, device=device)
            cache.batch_select_indices(k)
            attn, next_pos, nxt, seeds = attn[k], next_pos[k], nxt[k], seeds[k]
            rows = [rows[r] for r in alive]
        out = model(input_ids=nxt[:, None], attention_mask=attn[:, : width + t + 1], position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True, **mixed([jobs[a][0] for a in rows]))
        logits = out.logits[:, -1, :]
        next_pos += 1
    return {job: (tokens[a], finished[a]) for a, job in enumerate(jobs)}


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    hits = [text.index(s) + len(s) for s in stop if s in text]
    return text[: min(hits)] if hits else text


def generate(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    seed: int = 0,
    batch_size: int = 32,
    backend: str = "hf",
    progress: bool = True,
    desc: str = "generate",
    keys: Sequence[tuple[int, ...]] | None = None,
    adapters: Sequence[str] | None = None,
) -> list[list[Sample]]:
    """n completions for each prompt (chat message lists, strings or token ids).

    temperature 0 is greedy decoding. Returns one list of n Samples per prompt, in order.
    Sample j of prompt i draws from seed_from(*keys[i], j); keys default to (seed, i), so a
    prompt's samples depend on its key only. adapters: per prompt, the name of the LoRA adapter
    of a peft model that answers it ("__base__": none); None uses the model as it is. A
    soar.stacked.Students model (batched full students) samples on its own forward, each prompt
    answered by the student adapters[i] names (its index), batch_size and backend aside.
    """
    keys = [(seed, i) for i in range(len(prompts))] if keys is None else [tuple(k) for k in keys]
    if len(keys) != len(prompts) or (adapters is not None and len(adapters) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts need as many keys and adapters, got {len(keys)} and "
                         f"{None if adapters is None else len(adapters)}")
    if getattr(model, "batched_students", False):  # soar.stacked.Students: adapters[i] is prompt i's student
        return model.generate(tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, keys=keys, students=adapters, stop=stop)
    if backend == "vllm":
        return _generate_vllm(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, stop=stop, keys=keys, adapters=adapters)
    if backend != "hf":
        raise ValueError(f"unknown generation backend {backend!r} (hf | vllm)")
    prompt_ids = encode_prompts(tokenizer, prompts)
    eos = eos_ids(model, tokenizer)
    # Longest prompts first: batches of similar length waste less padding, and the
    # progress bar's rate settles early.
    jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(n)), key=lambda ij: -len(prompt_ids[ij[0]]))
    results: dict = {}
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit="seq")
    start, new_tokens = time.perf_counter(), 0
    try:
        for b in range(0, len(jobs), batch_size):
            chunk = jobs[b : b + batch_size]
            done = _decode_batch(model, tokenizer, prompt_ids, chunk, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, stop=tuple(stop), keys=keys, eos=eos,
                                 adapters=adapters)
            results.update(done)
            new_tokens += sum(len(t) for t, _ in done.values())
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - start):.0f}")
    finally:
        bar.close()
        model.train(was_training)
    out: list[list[Sample]] = [[] for _ in prompts]
    for i in range(len(prompts)):
        for j in range(n):
            toks, fin = results[(i, j)]
            text = _cut_at_stop(tokenizer.decode(toks, skip_special_tokens=True), stop) if tokenizer else ""
            out[i].append(Sample(i, j, tuple(prompt_ids[i]), tuple(toks), text, fin))
    return out


# --- vLLM (generation.backend: vllm) ----------------------------------------------------------
# vLLM pins its own transformers, so it lives in its own environment (requirements-gpu.txt;
# docs/scale-out.md). Not run by the CPU test suite (vLLM needs a GPU); tests/test_sampling.py
# checks this plumbing against a stand-in `vllm` module that follows vLLM's weight loading,
# start-up and shutdown (as in its 0.31.0 and 0.33.0 wheels). Each engine runs in this process,
# as TRL's colocate mode does (trl/generation/vllm_generation.py: distributed_executor_backend=
# "external_launcher"), so that its model's `load_weights` takes (name, tensor) pairs: an engine
# is built once, and when the weights it must compute with change they are loaded into it in
# place and its prefix cache is reset (its KV came from the old weights):
# - plain models (full fine-tuning, fail@k): every weight, when the model asked for is not the one
#   the engine holds (the policy's other model, or the same one after an update, reset, load or
#   promotion: soar.policy bumps `weights_version`);
# - LoRA policies: the base weights after a promotion merged a student into them (`base_version`);
#   the adapters themselves are served per request, saved (megabytes) before every call. The
#   reference (adapters switched off) is served as a zero adapter, so it runs through the same
#   LoRA kernels as the students it is compared with (a kernel difference alone could flip a
#   greedy answer, and one flip on |Q_R| = 64 is above the promotion threshold tau).
# Engines are never closed: an in-process engine's shutdown runs vLLM's
# cleanup_dist_env_and_memory() (vllm/v1/engine/core.py, EngineCore.shutdown), which destroys the
# parallel groups and the default process group that every other engine of the process shares
# (distributed/parallel_state.py), so the next step of a surviving engine would fail. An engine
# serves one role (`engine_key`: a Policy, or a model) while a model of it is alive; when the last
# one is collected the engine is kept, free, and the next model of the same architecture adopts it
# with its own weights loaded in place (a temporary Base-T teacher's engine serves the next
# teacher, a replaced student's the next student). The process's exit frees them.

VLLM_GPU_MEMORY = float(os.environ.get("SOAR_VLLM_GPU_MEMORY", "0.3"))  # per engine: teacher and student each have one
VLLM_MAX_MODEL_LEN = GenerationConfig.max_model_len  # generation.max_model_len (configure)
_BASE = "__base__"  # peft's adapter name for "no adapter" (the reference), in `adapters` too
_ENGINES: list["_VLLMEngine"] = []  # every engine this process built, for its lifetime
# what vLLM's external_launcher reads to form its one-process torch.distributed group
_LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def configure(generation: GenerationConfig) -> None:
    """Take this process's vLLM engine settings from the run's config (generation.max_model_len)
    for the engines built from now on. A setting of the process, not of a call: an engine outlives
    the call that builds it, and generate() is given no config. Each stage calls this once after
    loading its config, as do Ray actors."""
    global VLLM_MAX_MODEL_LEN
    VLLM_MAX_MODEL_LEN = generation.max_model_len


class _VLLMEngine:
    def __init__(self, model, tokenizer):
        self.dir = Path(tempfile.mkdtemp(prefix="soar-vllm-"))
        weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)  # at exit: engines live as long
        self.lora = hasattr(model, "peft_config")
        self.max_model_len = VLLM_MAX_MODEL_LEN
        self.signature = _signature(model, tokenizer)
        self.key, self.users = None, set()  # the role it serves and the ids of its live models (_engine)
        self.calls, self.lora_ids, self.zero = 0, itertools.count(1), None
        base = model.get_base_model() if self.lora else model
        # the base weights as they are now, without the adapters (peft names them base_layer)
        clean = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
        base.save_pretrained(self.dir / "base", state_dict=clean)
        tokenizer.save_pretrained(self.dir / "base")
        from vllm import LLM  # noqa: PLC0415  (optional extra, imported here only)

        lora_args = {}
        if self.lora:
            lora_args = {"enable_lora": True, "max_lora_rank": _lora_rank_cap(model),
                         "max_loras": 8}  # adapters in one batch (batched students); more are scheduled in turns
        # The engine goes on its model's GPU (the memory plan's placement: teacher and student
        # apart): external_launcher puts its worker on cuda:LOCAL_RANK.
        self.gpu = _gpu_of(model)
        with _launcher_env(self.gpu), self.on_gpu():
            self.llm = LLM(model=str(self.dir / "base"), gpu_memory_utilization=VLLM_GPU_MEMORY, seed=0,
                           max_model_len=self.max_model_len, distributed_executor_backend="external_launcher",
                           **lora_args)
        # EngineCore.__init__ gc.freeze()s every object alive (vllm/v1/engine/core.py,
        # freeze_gc_heap): our models among them, which cyclic GC (a full-FT Policy's base) would
        # then never free, nor release their engine. vLLM's own shutdown unfreezes the same way.
        gc.unfreeze()
        self.holds = self._weights(model)
        for f in (self.dir / "base").glob("*.safetensors"):  # loaded; later weights come in place
            f.unlink()

    def on_gpu(self):
        """The engine's GPU as the current CUDA device while it works (its kernels and streams
        follow the current device); nothing on the CPU."""
        return torch.cuda.device(self.gpu) if self.gpu is not None else contextlib.nullcontext()

    def _weights(self, model):
        """Which weights the engine needs for `model` now: the model, and its weights' version (a
        LoRA model's base version; soar.policy bumps them)."""
        return id(model), getattr(model, "base_version" if self.lora else "weights_version", 0)

    def adopt(self, key) -> None:
        """Serve a new role: its model's weights are loaded at the next hold(), its zero adapter saved anew."""
        self.key, self.holds, self.zero = key, None, None

    def hold(self, model) -> None:
        """Make the engine compute with `model`'s current weights (its base's, under LoRA), in place."""
        weights = self._weights(model)
        if self.holds == weights:
            return
        base = model.get_base_model() if self.lora else model
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with self.on_gpu():
            engine_model.load_weights([(_vllm_name(n), p.detach()) for n, p in base.named_parameters()
                                       if "lora_" not in n])
            self.llm.reset_prefix_cache()
        self.holds = weights

    def lora_requests(self, model, names: list[str]) -> list:
        """A LoRARequest per name: the adapter's weights saved now (a new id each call: they changed
        since the last one), or for _BASE the zero adapter (saved once; its output is the base's)."""
        from vllm.lora.request import LoRARequest  # noqa: PLC0415

        self.calls += 1
        out = {name: LoRARequest(f"{name}-{self.calls}", next(self.lora_ids),
                                 str(_save_adapter(model, name, self.dir / f"call{self.calls}")))
               for name in sorted(set(names) - {_BASE})}
        shutil.rmtree(self.dir / f"call{self.calls - 1}", ignore_errors=True)  # vLLM has loaded it
        if _BASE in names:
            if self.zero is None:
                path = _save_adapter(model, model.active_adapter, self.dir / f"zero{self.calls}")
                weights = path / "adapter_model.safetensors"
                save_file({k: torch.zeros_like(v) for k, v in load_file(weights).items()}, weights)
                self.zero = LoRARequest("zero", next(self.lora_ids), str(path))
            out[_BASE] = self.zero
        return [out[name] for name in names]


def _engine(model, tokenizer) -> _VLLMEngine:
    """The engine serving `model`'s role (`engine_key`, else the model), built on first use or
    adopted from a role whose models are all gone (weakref.finalize), so that no engine answers for
    a later model that happens to reuse a dead one's id without loading its weights."""
    key = getattr(model, "engine_key", id(model))
    engine = next((e for e in _ENGINES if e.key == key), None)
    if engine is None:
        signature = _signature(model, tokenizer)
        engine = next((e for e in _ENGINES if e.key is None and e.signature == signature), None)
        if engine is None:
            engine = _VLLMEngine(model, tokenizer)
            _ENGINES.append(engine)
            engine.key = key
        else:
            engine.adopt(key)
    if id(model) not in engine.users:
        engine.users.add(id(model))
        weakref.finalize(model, _release, engine, id(model))
    return engine


def _release(engine: _VLLMEngine, user: int) -> None:
    """A model the engine served is gone; with the last one, the engine is free (not closed)."""
    engine.users.discard(user)
    if not engine.users:
        engine.key = None


def _signature(model, tokenizer) -> tuple:
    """What an engine is built for, beyond its weights: LoRA (and its rank cap), the architecture,
    the tokenizer it detokenizes with, its GPU and length. A model of the same signature can take
    over a free engine by loading its weights."""
    lora = hasattr(model, "peft_config")
    config = (model.get_base_model() if lora else model).config.to_dict()
    config.pop("_name_or_path", None)
    return (lora, lora and _lora_rank_cap(model), repr(sorted(config.items())), tokenizer.name_or_path,
            len(tokenizer), _gpu_of(model), VLLM_MAX_MODEL_LEN)


def _lora_rank_cap(model) -> int:
    """max_lora_rank of a LoRA engine: the adapters' largest rank, rounded up to vLLM's powers of two."""
    rank = max(c.r for c in model.peft_config.values())
    return max(8, 1 << (rank - 1).bit_length())


@contextlib.contextmanager
def _launcher_env(gpu: int | None):
    """The environment vLLM's external_launcher reads while an engine starts: a one-process
    torch.distributed group (what is already set, e.g. by torchrun, is kept) on cuda:LOCAL_RANK.
    Restored after: the group is formed by then, and whatever starts later (a local Ray's workers
    inherit the environment) must not take the engine's MASTER_PORT, which its store holds."""
    saved = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", str(_free_port()))):
        os.environ.setdefault(key, value)
    os.environ["LOCAL_RANK"] = str(gpu or 0)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _save_adapter(model, name: str, path: Path) -> Path:
    """Save peft adapter `name` under path; the folder that holds it."""
    model.save_pretrained(path, selected_adapters=[name])
    return path if name == "default" else path / name  # peft saves other adapters in subfolders


def _vllm_name(name: str) -> str:
    """A (peft) parameter name as vLLM's load_weights takes it: the HF name. TRL's rule
    (trl/generation/vllm_generation.py, _iter_named_params): a LoRA engine's wrapped layer
    forwards the rest of the name to the layer it wraps (vllm/lora/layers/base.py,
    BaseLayerWithLoRA.load_weights), which knows `weight`, not `base_layer.weight`."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def _gpu_of(model) -> int | None:
    """The index of the GPU `model` is on; None on the CPU."""
    device = next(model.parameters()).device
    return (device.index or 0) if device.type == "cuda" else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generate_vllm(model, tokenizer, prompts, *, n, max_new_tokens, temperature, top_p, stop, keys, adapters):
    """generate() on vLLM: one request per prompt with n samples and its own seed (its key).
    LoRA policies: the adapter that answers each prompt (the active one, or `adapters[i]`; the zero
    adapter inside Policy.reference() and for "__base__") on an engine holding the current base
    weights. Plain models (full fine-tuning, fail@k): the engine computes with the model's current
    weights."""
    from vllm import SamplingParams  # noqa: PLC0415  (optional extra, imported here only)
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    lora = hasattr(model, "peft_config")
    if not lora and adapters is not None:
        raise ValueError("per-prompt adapters need a LoRA model (batched students: adapter: lora)")
    engine = _engine(model, tokenizer)
    prompt_ids = encode_prompts(tokenizer, prompts)
    longest = max(map(len, prompt_ids), default=0) + max_new_tokens
    if longest > engine.max_model_len:
        raise ValueError(f"a prompt of {longest - max_new_tokens} tokens + max_new_tokens {max_new_tokens} is longer "
                         f"than the vLLM engine's {engine.max_model_len} (generation.max_model_len)")
    engine.hold(model)
    requests = None
    if lora:
        disabled = any(getattr(m, "disable_adapters", False) for m in model.modules() if hasattr(m, "lora_A"))
        names = [_BASE] * len(prompts) if disabled else list(adapters or [model.active_adapter] * len(prompts))
        requests = engine.lora_requests(model, names)
    params = [SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             stop=list(stop) or None, include_stop_str_in_output=True, seed=seed_from(*keys[i]) % 2**32)
              for i in range(len(prompts))]
    with engine.on_gpu():
        outs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False,
                                   lora_request=requests)
    return [
        [Sample(i, j, tuple(prompt_ids[i]), tuple(c.token_ids), c.text, c.finish_reason == "stop")
         for j, c in enumerate(o.outputs)]
        for i, o in enumerate(outs)
    ]
