"""The memory plan (soar.budget) against the memory a CPU run takes: peak RSS of RLOO updates.

A random Llama (TOY below, 22M parameters, fp32 on the CPU) is trained as the student by
soar.policy.update: 2 RLOO steps of 8 completions (2 micro-batches of 4) of PROMPT + NEW tokens,
under full fine-tuning, full fine-tuning with gradient checkpointing, and LoRA. Each case runs in
its own process, so its peak RSS (ru_maxrss) is its own; the measured cost is that peak minus the
RSS before the model loads (after the imports). The plan's prediction is the student's resident
memory plus its larger update phase (backward or optimizer step): no rollout runs here.
Each case runs twice: with glibc's default allocator, whose freed heap memory stays in RSS
(fragmentation), and with MALLOC_MMAP_THRESHOLD_=65536, so that every tensor above 64 KiB is its
own mapping, returned when freed: that peak is the tensors' (what the plan counts).
Writes results/benchmarks/memory.json.
    python benchmarks/bench_memory.py
"""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import psutil
import torch

from soar import budget, config, data, paths
from soar.policy import load_policy, make_optimizer, update
from soar.sampling import Sample

TOY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 384, "intermediate_size": 1024,
       "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 32000,
       "max_position_embeddings": 1024, "tie_word_embeddings": True}
PROMPT, NEW, SAMPLES, STEPS = 64, 192, 8, 2
CASES = [("full", False), ("full", True), ("lora", False)]
ALLOCATORS = {"glibc_default": {}, "tensors_only": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def case_config(folder: str, adapter: str, checkpointing: bool):
    return config.load("params.yaml", {"model": {"name": f"random:{folder}", "dtype": "float32", "device": "cpu"},
                                       "student": {"adapter": adapter, "gradient_checkpointing": checkpointing,
                                                   "micro_batch": 4, "max_new_tokens": NEW}})


def run_case(folder: str, adapter: str, checkpointing: bool) -> dict:
    """One case in this process: (planned, measured) bytes."""
    import peft  # noqa: F401  (imported before the baseline: code is not what the plan counts)
    from transformers import LlamaForCausalLM  # noqa: F401

    torch.set_num_threads(2)
    cfg = case_config(folder, adapter, checkpointing)
    g = torch.Generator().manual_seed(0)
    steps = [[Sample(0, j, tuple(torch.randint(3, TOY["vocab_size"], (PROMPT,), generator=g).tolist()),
                     tuple(torch.randint(3, TOY["vocab_size"], (NEW,), generator=g).tolist()), "", False)
              for j in range(SAMPLES)] for _ in range(STEPS)]
    before = psutil.Process().memory_info().rss
    policy = load_policy(cfg.model, cfg.student)
    policy.tokenizer = type("Pad", (), {"pad_token_id": 0})()  # random: has no tokenizer; update reads the pad id
    optimizer, scheduler = make_optimizer(policy, lr=1e-5, warmup_steps=0, total_steps=STEPS)
    for samples in steps:
        update(policy, optimizer, scheduler, samples, torch.randn(SAMPLES, generator=g), kl_coef=cfg.student.kl_coef,
               max_grad_norm=1.0, micro_batch=cfg.student.micro_batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    m = budget.model_memory(cfg, "student", budget.architecture(cfg.model.name), bytes_per_param=4, prompt=PROMPT)
    update_phase = max(("backward", "optimizer step"), key=lambda p: sum(m.phases[p].values()))
    return {"plan_mb": (m.held + sum(m.phases[update_phase].values())) / 2**20, "measured_mb": (peak - before) / 2**20,
            "plan_parts_mb": {k: v / 2**20 for k, v in {**m.resident, **m.phases[update_phase]}.items() if v},
            "plan_phase": update_phase}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--case":  # a child process: one case, its result on stdout
        print(json.dumps(run_case(sys.argv[2], sys.argv[3], sys.argv[4] == "True")))
        return
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(TOY))
        cases = []
        for adapter, checkpointing in CASES:
            case = {"adapter": adapter, "gradient_checkpointing": checkpointing, "measured_mb": {}, "plan_over_measured": {}}
            for allocator, env in ALLOCATORS.items():
                out = subprocess.run([sys.executable, __file__, "--case", folder, adapter, str(checkpointing)],
                                     capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
                run = json.loads(out.splitlines()[-1])
                case["measured_mb"][allocator] = run.pop("measured_mb")
                case["plan_over_measured"][allocator] = run["plan_mb"] / case["measured_mb"][allocator]
                case.update(run)
            cases.append(case)
        arch = budget.architecture(folder)
    result = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(), "threads": 2,
              "device": "cpu", "model": {"config": TOY, "parameters": arch.params},
              "sizes": {"prompt_tokens": PROMPT, "max_new_tokens": NEW, "samples_per_step": SAMPLES, "micro_batch": 4,
                        "steps": STEPS},
              "allocators": ALLOCATORS, "cases": cases}
    out = paths.BENCHMARKS / "memory.json"
    data.write_json(out, result)
    for c in cases:
        measured = ", ".join(f"{a} {c['measured_mb'][a]:.0f} MB ({c['plan_over_measured'][a]:.2f})" for a in ALLOCATORS)
        print(f"{c['adapter']}{' + checkpointing' if c['gradient_checkpointing'] else ''}: plan {c['plan_mb']:.0f} MB; "
              f"measured (plan / measured): {measured}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
