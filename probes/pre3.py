"""C2 through soar.addition.pretrain itself (the implementation the pipeline runs), then the probe's readings."""
import json, sys, time
import torch
from pathlib import Path
from soar import addition as A, config, grading
from soar.student import evaluate_student
from soar.sampling import generate
from soar.teacher import teacher_prompt
import os
from pathlib import Path

# models and readings: results/world-probes (the readings are committed, the models are not)
OUT = Path(os.environ.get("SOAR_PROBES", "results/world-probes"))
OUT.mkdir(parents=True, exist_ok=True)

sys.path.insert(0, str(Path(__file__).parent))
from pre2 import readings

def main(name, seed=0, **kw):
    cfg = config.PretrainConfig(**kw)
    info = A.pretrain(cfg, Path(f"{OUT}/{name}"), seed=seed, progress=False)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(f"{OUT}/{name}"); model = LlamaForCausalLM.from_pretrained(f"{OUT}/{name}")
    rows, teacher = readings(model, tok)
    res = {"name": name, "seed": seed, "cfg": kw, "loss": info["loss"][-1], "seconds": info["seconds"], "student": rows,
           "teacher": teacher}
    json.dump(res, open(f"{OUT}/{name}.json", "w"), indent=1)
    print(json.dumps(res))

if __name__ == "__main__":
    main(**json.loads(sys.argv[1]))
