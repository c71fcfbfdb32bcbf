"""The paper-path dry run: the paper profile's code path on a CPU in a few minutes (`make dry-run`).

`python -m soar.dry_run [--profile paper|gpu1] [--out DIR]` runs the pipeline's own notebooks, as dvc.yaml's stages run
them (papermill, the same parameters), in a scratch project DIR: prepare_data -> fail_at_k ->
one SOAR outer step of each SOAR run the retrain methods need (grounded, intrinsic,
no_promotion) -> retrain (the paper profile's methods on both pools) -> evaluate. The config is what
`dvc exp run -S profile=paper` resolves (params.yaml + profiles/paper.yaml) with
profiles/paper_dry/sizes.yaml applied last: toy sizes, and for the model random weights of a
scaled-down Llama-3.2 config (profiles/paper_dry/llama.json) in bf16 with the embedded SmolLM2
tokenizer, written into DIR/models/. So full fine-tuning of teacher and student with fp32
masters, reward_metric accuracy, a full-weights promotion, the evaluation of the Promoted
Student and of every method's checkpoints all run; what only a GPU can show (bf16 numerics at
scale, vLLM, memory, speed) is listed in the README ("Paper-path dry run").
`--profile gpu1` runs the one-GPU profile's path the same way (profiles/gpu1.yaml, which extends
paper, with the same sizes on top): LoRA students trained batched on one base
(parallel.batch_students), a LoRA student's promotion, and the profile's retrain methods and pool.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from soar import paths

HERE = paths.ROOT / "profiles" / "paper_dry"
SIZES = HERE / "sizes.yaml"
LLAMA = HERE / "llama.json"
TOKENIZER = "smollm2-135m-instruct"  # embedded (make setup); its vocabulary is llama.json's
PROFILES = ("paper", "gpu1")  # the GPU profiles whose path it runs; gpu1 extends paper
SOAR_RUNS = ("grounded", "intrinsic", "no_promotion")  # the SOAR runs the paper's retrain methods read
NOTEBOOKS = paths.ROOT / "notebooks"


def overrides(profile: str = "paper") -> dict:
    """What the notebooks get as `overrides`: the profile, then the dry run's sizes."""
    return {"profile": profile, **yaml.safe_load(SIZES.read_text())}


def resolved_config(profile: str = "paper"):
    """The dry run's config, as every notebook resolves it."""
    from soar import config

    return config.load(paths.ROOT / "params.yaml", overrides(profile))


def check_paper_path(cfg, profile: str = "paper") -> None:
    """The knobs that choose the code path are the profile's (a dry run of another path proves nothing)."""
    from soar import config

    real = config.load(paths.ROOT / "params.yaml", {"profile": profile})
    same = {"student.adapter", "teacher.adapter", "soar.reward_metric", "soar.reward", "soar.teacher_mode",
            "soar.promotion", "fail_at_k.pools", "retrain.methods", "evaluate.extra", "generation.backend",
            "student.lr", "teacher.lr", "student.kl_coef", "teacher.warmup_steps", "retrain.warmup_steps",
            "parallel.backend", "parallel.batch_students"}
    for key in sorted(same):
        section, name = key.split(".")
        ours, theirs = getattr(getattr(cfg, section), name), getattr(getattr(real, section), name)
        if ours != theirs:
            raise AssertionError(f"dry run: {key} is {ours!r}, the {profile} profile's is {theirs!r}")


def write_model(out: Path) -> Path:
    """Random weights of llama.json (seeded) with the SmolLM2 tokenizer, as a model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from soar import models

    folder = out / paths.MODELS / "paper-dry-llama"
    config = AutoConfig.from_pretrained(LLAMA)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(models.convert_embedded(TOKENIZER, root=paths.ROOT / paths.MODELS))
    if len(tokenizer) != config.vocab_size:
        raise AssertionError(f"{LLAMA}: vocab_size {config.vocab_size}, the tokenizer has {len(tokenizer)}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(out: Path, profile: str = "paper") -> dict:
    """The dry run of `profile` in the scratch project `out`; returns {stage: wall seconds}."""
    import papermill

    cfg = resolved_config(profile)
    check_paper_path(cfg, profile)
    out.mkdir(parents=True, exist_ok=True)
    (out / paths.DATA_RAW).parent.mkdir(parents=True, exist_ok=True)
    if not (out / paths.DATA_RAW).exists():
        (out / paths.DATA_RAW).symlink_to(paths.ROOT / paths.DATA_RAW)
    (out / paths.RESULTS / "notebooks").mkdir(parents=True, exist_ok=True)
    write_model(out)
    common = {"params_file": str(paths.ROOT / "params.yaml"), "overrides": overrides(profile)}
    stages = [("prepare_data", "00_prepare_data", {}), ("fail_at_k", "01_fail_at_k", {})]
    stages += [(f"soar {v}", "02_train_soar", {"variant": v, "seed": 0}) for v in SOAR_RUNS]
    stages += [("retrain", "03_train_students", {}), ("evaluate", "04_evaluate", {})]
    times = {}
    for stage, notebook, params in stages:
        record = out / paths.RESULTS / "notebooks" / f"{notebook}{''.join(f'-{v}' for v in params.values())}.ipynb"
        print(f"dry run: {stage} ...", flush=True)
        clock = time.perf_counter()
        papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(record), parameters={**common, **params},
                                   cwd=str(out), progress_bar=False, kernel_name="python3")
        times[stage] = round(time.perf_counter() - clock, 1)
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m soar.dry_run", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="paper", help="whose path to run (default: paper)")
    parser.add_argument("--out", type=Path, default=None, help="scratch project folder (default: a new temp dir)")
    args = parser.parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)  # the notebooks' kernels inherit them: nothing is downloaded
    out = (args.out or Path(tempfile.mkdtemp(prefix=f"soar-{args.profile}-dry-"))).resolve()
    times = run(out, args.profile)
    print(f"dry run: done in {sum(times.values()):.0f} s {times}; outputs in {out}")
    print((out / paths.TABLES / "main.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
