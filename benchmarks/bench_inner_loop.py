"""One student inner loop two ways, in the same run: `soar.student.train_student` (our RLOO loop
on soar.rl) against TRL's `RLOOTrainer` with the same sizes, LoRA, learning rate, KL coefficient,
micro-batch and reward. Why the project uses its own loop is in the README ("Inner loop").

Each side runs in its own subprocess (so peak RSS is its own), on the same teacher dataset: the
first dataset of results/soar/grounded/seed0/samples (or, before the soar stage has run, GSM8K
problems with their gold answers). Reports wall time per inner step and the ratio TRL / ours.
Writes results/benchmarks/inner_loop.json.
    python benchmarks/bench_inner_loop.py [--profile tiny] [--steps 4] [--repeats 1]
"""

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import torch

from soar import config, data, grading, models, paths

MICRO_BATCH = 4  # soar.policy.update's default; TRL is given the same via gradient accumulation


def teacher_dataset(n: int) -> tuple[list[data.Problem], str]:
    first = paths.RESULTS / "soar" / "grounded" / "seed0" / "samples" / "step_000000.jsonl"
    if first.exists():
        row = data.read_jsonl(first)[0]
        return ([data.Problem(id=f"q{i}", problem=q, answer=a)
                 for i, (q, a) in enumerate(zip(row["questions"], row["answers"]))][:n],
                "teacher dataset 0 of soar/grounded/seed0 step 0")
    return data.load_benchmark("gsm8k_test", limit=n, seed=0), "gsm8k_test sample (no soar run yet)"


def run_ours(cfg, dataset, steps: int, grader) -> dict:
    from soar.policy import Policy
    from soar.student import train_student

    policy = Policy(*models.load_model(cfg.model.name, dtype="float32", device="cpu"),
                    adapter="lora", lora_r=cfg.student.lora_r, lora_alpha=cfg.student.lora_alpha)
    start = time.perf_counter()
    run = train_student(policy, dataset, cfg.student, steps=steps, seed=0, grader=grader, generation=cfg.generation)
    return {"wall_s": time.perf_counter() - start,
            "reward_mean": [m["student/reward_mean"] for m in run.metrics]}


def run_trl(cfg, dataset, steps: int, grader) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RLOOConfig, RLOOTrainer

    from soar import prompts

    s = cfg.student
    model, tokenizer = models.load_model(cfg.model.name, dtype="float32", device="cpu")
    rewards_seen = []

    def shaped_reward(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        r = grading.student_rewards(texts, list(answer), grader=grader)
        rewards_seen.append(sum(r) / len(r))
        return r

    train = Dataset.from_list([{"prompt": prompts.student_messages(q.problem), "answer": q.answer} for q in dataset])
    batch = s.questions_per_step * s.samples_per_question
    with tempfile.TemporaryDirectory() as tmp:
        args = RLOOConfig(
            output_dir=tmp, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0,
            max_steps=steps, learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=s.warmup_steps,
            max_grad_norm=s.max_grad_norm, beta=s.kl_coef, num_generations=s.samples_per_question,
            # one generation of Q x G completions per optimizer step, taken in micro-batches
            per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=batch // MICRO_BATCH,
            steps_per_generation=batch // MICRO_BATCH, max_completion_length=s.max_new_tokens,
            temperature=s.temperature, top_p=cfg.generation.top_p, disable_tqdm=True,
            gradient_checkpointing=False,  # TRL turns it on by default; ours does not checkpoint
        )
        trainer = RLOOTrainer(model=model, reward_funcs=shaped_reward, args=args, train_dataset=train,
                              processing_class=tokenizer,
                              peft_config=LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, target_modules="all-linear",
                                                     task_type="CAUSAL_LM"))
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    return {"wall_s": wall, "reward_mean": rewards_seen}


def child(which: str, profile: str, steps: int, out: str) -> None:
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    cfg = config.load("params.yaml", {"profile": profile})
    dataset, source = teacher_dataset(cfg.soar.n)
    with grading.Grader(timeout=cfg.grading.timeout_s, workers=cfg.grading.workers) as grader:
        result = (run_ours if which == "ours" else run_trl)(cfg, dataset, steps, grader)
    result |= {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "dataset": source}
    Path(out).write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--trl-timeout", type=int, default=1200, help="seconds before TRL is stopped and reported as a bound")
    ap.add_argument("--child", choices=["ours", "trl"])
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.profile, args.steps, args.out)
    cfg = config.load("params.yaml", {"profile": args.profile})
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):  # alternate, so drift in machine load hits both sides
            for which in ("ours", "trl"):
                out = f"{tmp}/{which}{rep}.json"
                start = time.perf_counter()
                proc = subprocess.Popen([sys.executable, __file__, "--child", which, "--profile", args.profile,
                                         "--steps", str(args.steps), "--out", out], start_new_session=True)
                try:
                    if proc.wait(timeout=args.trl_timeout if which == "trl" else None):
                        raise SystemExit(f"the {which} run failed")
                    runs[which].append(json.loads(Path(out).read_text()) | {"finished": True})
                except subprocess.TimeoutExpired:  # report a lower bound, not nothing
                    os.killpg(proc.pid, signal.SIGKILL)  # with its grader workers
                    proc.wait()
                    runs[which].append({"finished": False, "wall_s": time.perf_counter() - start,
                                        "peak_rss_mb": None, "reward_mean": []})
    s = cfg.student
    per_step = {k: min(r["wall_s"] for r in v) / args.steps for k, v in runs.items()}
    result = {
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(), "threads": 2,
        "profile": args.profile, "dataset": runs["ours"][0]["dataset"],
        "sizes": {"inner_steps": args.steps, "questions_per_step": s.questions_per_step,
                  "samples_per_question": s.samples_per_question, "max_new_tokens": s.max_new_tokens,
                  "micro_batch": MICRO_BATCH, "adapter": "lora", "lora_r": s.lora_r},
        "repeats": args.repeats,
        "step_s": per_step,
        "trl_finished": all(r["finished"] for r in runs["trl"]),
        # when TRL was stopped, its time is a lower bound (process wall time, model loading included)
        "trl_over_ours": per_step["trl"] / per_step["ours"],
        "peak_rss_mb": {k: max((r["peak_rss_mb"] for r in v if r["peak_rss_mb"]), default=None) for k, v in runs.items()},
        "reward_mean_per_step": {k: v[0]["reward_mean"] for k, v in runs.items()},
    }
    out = paths.BENCHMARKS / "inner_loop.json"
    data.write_json(out, result)
    bound = "" if result["trl_finished"] else " > (stopped at --trl-timeout)"
    print(f"inner step: ours {per_step['ours']:.1f} s, TRL RLOOTrainer{bound} {per_step['trl']:.1f} s "
          f"(TRL / ours{bound} {result['trl_over_ours']:.2f}); peak RSS (MB) {result['peak_rss_mb']} -> {out}")


if __name__ == "__main__":
    main()
