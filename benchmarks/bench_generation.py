"""Generation throughput: soar.sampling's decode loop vs the loop it replaced, in the same run.

Both decode the same batch (GSM8K test prompts, the student prompt, n samples each, one prefill
per prompt) at temperature 1 with the same token budget on the embedded model (V = 49,152):
- soar.sampling._decode_batch: Gumbel-max sampling on the device from counter-based noise, one
  device -> host copy per step (the sampled ids), a KV cache allocated once;
- BASELINE, the loop before it (a faithful copy of soar/sampling.py at commit fad1f8d, below):
  the softmax copied to the host every step and each row sampled by its own CPU generator, and a
  DynamicCache grown by concatenation.
Reports tokens/s of each and their ratio, after a warm-up pass of both; the repeats alternate,
so drift in machine load hits both. Writes results/benchmarks/generation.json.
    python benchmarks/bench_generation.py [--prompts 16] [--n 4] [--tokens 96] [--repeats 2]
"""

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from soar import sampling
from soar.data import load_benchmark, seed_from, write_json
from soar.models import load_model
from soar.prompts import student_messages
from soar.sampling import encode_prompts, eos_ids


# --- BASELINE: the decode loop of soar/sampling.py at commit fad1f8d, unchanged -----------------

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
def baseline_decode_batch(model, tokenizer, prompt_ids, jobs, *, max_new_tokens, temperature, top_p, stop, keys, eos,
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


# --- the measurement ---------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    model.eval()
    prompts = [student_messages(p.problem) for p in load_benchmark("gsm8k_test", limit=args.prompts, seed=0)]
    prompt_ids = encode_prompts(tok, prompts)
    jobs = [(i, j) for i in range(len(prompts)) for j in range(args.n)]  # one batch of prompts x n
    loops = {"soar_generate": sampling._decode_batch, "baseline_loop": baseline_decode_batch}
    totals = {name: {"tokens": 0, "seconds": 0.0} for name in loops}
    # Repeat 0 is a warm-up, not counted: the first forward passes of a shape cost many times the
    # later ones (allocations), and would fall on whichever loop runs first.
    for rep in range(args.repeats + 1):
        for name, decode in loops.items():
            start = time.perf_counter()
            out = decode(model, tok, prompt_ids, jobs, max_new_tokens=args.tokens, temperature=1.0, top_p=1.0,
                         stop=(), keys=[(rep, i) for i in range(len(prompts))], eos=eos_ids(model, tok))
            if rep:
                totals[name]["seconds"] += time.perf_counter() - start
                totals[name]["tokens"] += sum(len(t) for t, _ in out.values())
            print(f"repeat {rep} {name}: {time.perf_counter() - start:.1f} s")
    for t in totals.values():
        t["tokens_per_s"] = t["tokens"] / t["seconds"]
    result = {
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "torch_threads": 2},
        "setup": {**vars(args), "batch": len(jobs), "model": "smollm2-135m-instruct", "vocab": model.config.vocab_size,
                  "temperature": 1.0},
        **totals,
        "speedup": totals["soar_generate"]["tokens_per_s"] / totals["baseline_loop"]["tokens_per_s"],
    }
    write_json(Path("results/benchmarks/generation.json"), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
