"""Batched sampling of n completions for many prompts: `generate(...)`.

The only module that imports vLLM (optional GPU extra, `backend="vllm"`). The default backend is
a plain KV-cached decode loop on Hugging Face forward passes, written out here rather than
`model.generate` because it gives us, for the same code on CPU and GPU:
- per-sample seeds: sample (i, j) draws from its own generator seeded by seed_from(seed, i, j),
  so a completion does not depend on which other prompts share its batch (up to float
  round-off from padding), which makes executors and resumed runs agree;
- one prefill per distinct prompt, shared by its n samples (the KV cache is gathered);
- mixed LoRA adapters in one batch (peft `adapter_names`): each prompt names the adapter that
  answers it, so several students on one base decode together (batched students);
- finished rows leave the batch at once, so long stragglers do not pay for short answers;
- stop strings and a progress bar with tokens/s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm  # plain bars: readable in papermill records, no ipywidgets needed

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


def _sample_next(logits: torch.Tensor, temperature: float, top_p: float, gens: list) -> torch.Tensor:
    """One token per row; each row draws from its own generator. logits: (B, V) -> (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()  # (B, V)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix with mass >= top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    picks = [torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(gens)]
    return torch.cat(picks).to(logits.device)


@torch.no_grad()
def _decode_batch(model, tokenizer, prompt_ids, jobs, *, max_new_tokens, temperature, top_p, stop, keys, eos,
                  adapters=None):
    """Decode one batch of (prompt_index, sample_index) jobs; returns {job: (ids, finished)}.
    keys[i]: prompt i's seed key; adapters[i]: the LoRA adapter answering prompt i (or None)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    unique = sorted({i for i, _ in jobs})
    row_of = {i: r for r, i in enumerate(unique)}
    width = max(len(prompt_ids[i]) for i in unique)
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(unique), width), pad, dtype=torch.long)
    attn = torch.zeros((len(unique), width), dtype=torch.long)
    for r, i in enumerate(unique):  # left padding: every row ends at the same column
        p = prompt_ids[i]
        ids[r, width - len(p):] = torch.tensor(p)
        attn[r, width - len(p):] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()

    def mixed(indices):  # peft's mixed-adapter batch: one adapter name per row
        return {} if adapters is None else {"adapter_names": [adapters[i] for i in indices]}

    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                use_cache=True, logits_to_keep=1, **mixed(unique))
    # One prefill per distinct prompt; fan the cache out to its samples.
    select = torch.tensor([row_of[i] for i, _ in jobs], device=device)
    cache.batch_select_indices(select)
    logits = out.logits[select, -1, :]  # (B, V)
    attn = attn[select]
    next_pos = pos[select, -1] + 1  # (B,)
    gens = [torch.Generator().manual_seed(seed_from(*keys[i], j)) for i, j in jobs]
    alive = list(range(len(jobs)))  # job indices still decoding, aligned with batch rows
    tokens: list[list[int]] = [[] for _ in jobs]
    finished = [False] * len(jobs)
    max_stop = max((len(s) for s in stop), default=0)
    for _ in range(max_new_tokens):
        nxt = _sample_next(logits, temperature, top_p, [gens[a] for a in alive])  # (B,)
        keep = []
        for row, a in enumerate(alive):
            t = int(nxt[row])
            tokens[a].append(t)
            done = t in eos
            if not done and stop:  # decode only the tail: stop strings are short
                tail = tokenizer.decode(tokens[a][-(max_stop + 8):], skip_special_tokens=True)
                done = any(s in tail for s in stop)
            if done:
                finished[a] = True
            else:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(alive):  # drop finished rows from the batch and the cache
            k = torch.tensor(keep, device=device)
            cache.batch_select_indices(k)
            attn, next_pos, nxt = attn[k], next_pos[k], nxt[k]
            alive = [alive[r] for r in keep]
        attn = torch.cat([attn, attn.new_ones((len(alive), 1))], dim=-1)
        out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True, **mixed([jobs[a][0] for a in alive]))
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
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
    of a peft model that answers it ("__base__": none); None uses the model as it is.
    """
    keys = [(seed, i) for i in range(len(prompts))] if keys is None else [tuple(k) for k in keys]
    if len(keys) != len(prompts) or (adapters is not None and len(adapters) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts need as many keys and adapters, got {len(keys)} and "
                         f"{None if adapters is None else len(adapters)}")
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
# vLLM pins its own torch, so it lives in its own environment (the `gpu` extra; README). Not run
# by the CPU test suite (vLLM needs a GPU); tests/test_sampling.py checks this plumbing against a
# stand-in `vllm` module. Two kinds of engine:
# - LoRA policies: one vllm.LLM per base model serves the policies' adapters per request; the
#   adapters are saved (megabytes) before every call, and when the base itself changes (a
#   promotion merges a student into it) the engine is rebuilt from the merged weights.
# - plain models (full fine-tuning, and fail@k's untrained model): one engine per Policy (its
#   trained copy and its reference share it, soar.policy sets `engine_key`) or per plain model,
#   holding one model's weights at a time. When the weights asked for are not the ones it holds
#   (another model of the policy, or the same one after an update, reset, load or promotion:
#   soar.policy bumps `weights_version`), they are loaded into the engine in place, as TRL's
#   colocate mode does after each optimizer step: the engine runs in this process
#   (distributed_executor_backend="external_launcher"), its model's `load_weights` takes
#   (name, tensor) pairs, and the prefix cache is reset (its KV was computed with the old weights).

VLLM_GPU_MEMORY = float(os.environ.get("SOAR_VLLM_GPU_MEMORY", "0.3"))  # per engine: teacher and student each have one
_ENGINES: dict[int, "_VLLMEngine"] = {}


def _weights_key(model) -> tuple[int, int]:
    """Which weights a plain model has now: the model, and its version (soar.policy)."""
    return id(model), getattr(model, "weights_version", 0)


class _VLLMEngine:
    def __init__(self, model, tokenizer):
        self.version = getattr(model, "base_version", 0)
        self.dir = Path(tempfile.mkdtemp(prefix="soar-vllm-"))
        self.calls = 0
        lora = hasattr(model, "peft_config")
        base = model.get_base_model() if lora else model
        # the base weights as they are now, without the adapters (peft names them base_layer)
        clean = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
        base.save_pretrained(self.dir / "base", state_dict=clean)
        tokenizer.save_pretrained(self.dir / "base")
        from vllm import LLM  # noqa: PLC0415  (optional extra, imported here only)

        if lora:
            rank = max(c.r for c in model.peft_config.values())
            self.llm = LLM(model=str(self.dir / "base"), enable_lora=True,
                           max_lora_rank=max(8, 1 << (rank - 1).bit_length()),  # vLLM takes powers of two
                           max_loras=8,  # adapters in one batch (batched students); more are scheduled in turns
                           gpu_memory_utilization=VLLM_GPU_MEMORY, seed=0)
            return
        # In-process worker (TRL's colocate mode), so that load_weights reaches the engine's model.
        # It is a one-process torch.distributed group: vLLM reads these if nothing set them.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, value)
        self.llm = LLM(model=str(self.dir / "base"), gpu_memory_utilization=VLLM_GPU_MEMORY, seed=0,
                       distributed_executor_backend="external_launcher")
        self.holds = _weights_key(model)
        for f in (self.dir / "base").glob("*.safetensors"):  # loaded; later weights come in place
            f.unlink()

    def hold(self, model) -> None:
        """Make the engine compute with `model`'s current weights (a plain model), in place."""
        if self.holds == _weights_key(model):
            return
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights([(name, p.detach()) for name, p in model.named_parameters()])
        self.llm.reset_prefix_cache()
        self.holds = _weights_key(model)

    def lora_requests(self, model, names):
        """A LoRARequest per adapter name, from the adapter's weights saved now (a new id each
        call: the weights changed since the last one)."""
        from vllm.lora.request import LoRARequest  # noqa: PLC0415

        self.calls += 1
        out = {}
        for k, name in enumerate(sorted(set(names))):
            path = self.dir / f"call{self.calls}"
            model.save_pretrained(path, selected_adapters=[name])
            path = path if name == "default" else path / name  # peft saves other adapters in subfolders
            out[name] = LoRARequest(f"{name}-{self.calls}", self.calls * 1000 + k + 1, str(path))
        shutil.rmtree(self.dir / f"call{self.calls - 1}", ignore_errors=True)  # vLLM has loaded it
        return out

    def close(self):
        del self.llm
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generate_vllm(model, tokenizer, prompts, *, n, max_new_tokens, temperature, top_p, stop, keys, adapters):
    """generate() on vLLM: one request per prompt with n samples and its own seed (its key).
    LoRA policies: the adapter that answers each prompt (the active one, or `adapters[i]`; none
    inside Policy.reference()) on an engine holding the current base weights. Plain models
    (full fine-tuning, fail@k): the engine computes with the model's current weights."""
    from vllm import SamplingParams  # noqa: PLC0415  (optional extra, imported here only)
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    lora = hasattr(model, "peft_config")
    if not lora and adapters is not None:
        raise ValueError("per-prompt adapters need a LoRA model (batched students: adapter: lora)")
    key = getattr(model, "engine_key", id(model))
    engine = _ENGINES.get(key)
    if lora and engine is not None and engine.version != getattr(model, "base_version", 0):
        engine.close()  # a promotion changed the base
        engine = None
    if engine is None:
        engine = _ENGINES[key] = _VLLMEngine(model, tokenizer)
    names, requests = None, {}
    if lora:
        disabled = any(getattr(m, "disable_adapters", False) for m in model.modules() if hasattr(m, "lora_A"))
        names = None if disabled else list(adapters) if adapters is not None else [model.active_adapter] * len(prompts)
        requests = engine.lora_requests(model, [x for x in names if x != "__base__"]) if names else {}
    else:
        engine.hold(model)
    prompt_ids = encode_prompts(tokenizer, prompts)
    params = [SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             stop=list(stop) or None, include_stop_str_in_output=True, seed=seed_from(*keys[i]) % 2**32)
              for i in range(len(prompts))]
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False,
                               lora_request=[requests.get(x) for x in names] if names else None)
    return [
        [Sample(i, j, tuple(prompt_ids[i]), tuple(c.token_ids), c.text, c.finish_reason == "stop")
         for j, c in enumerate(o.outputs)]
        for i, o in enumerate(outs)
    ]
