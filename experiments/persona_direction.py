"""Persona directions: extract trait vectors (evil, sycophantic, ...) with the persona-vector recipe,
probe each trait's system prompts by layer, and compare the traits' directions by cosine.

    python experiments/persona_direction.py                                   # embedded, CPU
    python experiments/persona_direction.py --model Qwen/Qwen2.5-7B-Instruct --questions 20 --max-new-tokens 200
"""

import argparse
import json
from pathlib import Path


from introspect_mech import load_model
from introspect_mech.activations import cache
from introspect_mech.probes import as_vectors, layer_sweep, persona_data
from introspect_mech.runs import RunDir
from introspect_mech.viz import export_dashboard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--traits", default="evil,sycophantic,impolite")
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--instructions", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/persona_direction")
    a = p.parse_args()

    out = Path(a.out)
    traits = a.traits.split(",")
    model = load_model(a.model)
    RunDir(out).write_manifest(title="Persona directions and probes", model=model.name, seed=a.seed,
                               data={"traits": traits}, judge="none: instruction-likelihood filter")
    dirs, probe_rows = {}, []
    for t in traits:
        res = persona_data(model, t, n_questions=a.questions, n_instructions=a.instructions,
                           max_new_tokens=a.max_new_tokens, seed=a.seed, max_heldout=1, out=out / t)
        dirs[t] = res.direction
        rows = [r for r in res.rows if r["response"].strip()]
        x = cache(model, [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]},
                           {"role": "assistant", "content": r["response"]}] for r in rows])
        sw = layer_sweep(x, [int(r["side"] == "pos") for r in rows], list(range(model.n_layers)), seed=a.seed)
        probe_rows += [{"probe": f"{t}: pos vs neg system prompt", "layer": l, **pr.as_dict()}
                       for l, pr in zip(sw.layers, sw.probes)]
        bl, b = sw.best()
        print(f"{t}: kept {len(res.kept)} pairs; best probe layer {bl} accuracy {b.accuracy:.3f} AUROC {b.auroc:.3f}")
    layers = list(range(model.n_layers))
    vec = {t: as_vectors(d, layers) for t, d in dirs.items()}
    pairs = [(s, t) for i, s in enumerate(traits) for t in traits[i + 1:]]
    cos = [[round(float(v), 4) for v in (vec[s] * vec[t]).sum(-1)] for s, t in pairs]
    (out / "probe_layers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probe_rows))
    (out / "cosines.jsonl").write_text(json.dumps({"name": "Cosine between trait directions at each layer",
                                                   "x_labels": [f"L{l}" for l in layers],
                                                   "y_labels": [f"{s} · {t}" for s, t in pairs], "matrix": cos}) + "\n")
    print(f"dashboard: {export_dashboard(out).resolve()}")


if __name__ == "__main__":
    main()
