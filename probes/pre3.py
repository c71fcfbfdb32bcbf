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
from pre2 import probs

def main(name, seed=0, **kw):
    cfg = config.PretrainConfig(**kw)
    info = A.pretrain(cfg, Path(f"{OUT}/{name}"), seed=seed, progress=False)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(f"{OUT}/{name}"); model = LlamaForCausalLM.from_pretrained(f"{OUT}/{name}")
    g = A.ExactGrader(); rows = []
    for lv in range(5):
        ps = probs(lv, 40, 1000 + lv)
        gr = evaluate_student(model, tok, ps, n_samples=1, grader=g, max_new_tokens=12, temperature=0.0, batch_size=512, progress=False)
        sa = evaluate_student(model, tok, ps, n_samples=64, grader=g, max_new_tokens=12, temperature=1.0, seed=lv, batch_size=2560, progress=False)
        rows.append({"level": lv, "greedy": gr.accuracy, "sampled": sa.accuracy, "zero64": sum(c == 0 for c in sa.counts) / len(ps)})
    outs = generate(model, tok, [teacher_prompt(tok, "<question>")], n=512, max_new_tokens=32, temperature=1.0, stop=("</answer>",), seed=0, batch_size=512, progress=False)[0]
    tl = {}
    for s in outs:
        pair = grading.parse_teacher_output("<question>" + s.text)
        if isinstance(pair, grading.Rejection): tl.setdefault("ill", [0, 0])[0] += 1; continue
        r = A.read(pair.question, pair.answer)
        key = f"L{r.level}" if r.well_posed and r.digits == (4, 4) else "other"
        c = tl.setdefault(key, [0, 0]); c[0] += 1; c[1] += bool(r.correct)
    res = {"name": name, "seed": seed, "cfg": kw, "loss": info["loss"][-1], "seconds": info["seconds"], "student": rows,
           "teacher": {k: {"share": v[0] / 512, "correct": v[1] / max(v[0], 1)} for k, v in sorted(tl.items())}}
    json.dump(res, open(f"{OUT}/{name}.json", "w"), indent=1)
    print(json.dumps(res))

if __name__ == "__main__":
    main(**json.loads(sys.argv[1]))
