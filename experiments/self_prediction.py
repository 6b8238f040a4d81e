"""Looking Inward (Binder et al. 2024): self-prediction vs cross-prediction vs the mode baseline.

A thin CLI over `introspect_mech.studies.self_prediction` (the protocol and its deviations are
documented there and in docs/self_prediction.md). Model A is finetuned to predict properties of its
own object-level answers; the ground truth is A's behaviour AFTER that finetune; model B is
finetuned on that behaviour (cross-prediction); both directions run when B is given.

    # embedded SmolLM2-135M-Instruct; B = a differently-seeded twin (a control, see docs)
    python experiments/self_prediction.py --out /tmp/li_cpu
    # a second, different model (Gemma-3-270M BASE with the fallback chat template: flagged)
    python experiments/self_prediction.py --other gemma3-270m --out /tmp/li_gemma
    # GPU, the paper-scale preset with two chat models
    python experiments/self_prediction.py --preset gpu --model Qwen/Qwen2.5-7B-Instruct --other Qwen/Qwen3-8B
"""

from __future__ import annotations

import argparse
import json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model A (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--other", default="twin",
                   help="model B: 'twin' (model A again, finetuned with seed+1), 'none' (one model), or a name/path")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"])
    p.add_argument("--n-train", type=int, default=None, help="questions per train dataset")
    p.add_argument("--n-test", type=int, default=None, help="questions per test dataset")
    p.add_argument("--n-shift", type=int, default=None, help="questions per shift dataset (shift finetune)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--no-shift", action="store_true", help="skip the behaviour-shift test")
    p.add_argument("--no-probes", action="store_true", help="skip the probes on the hypothetical prompt")
    p.add_argument("--probe-n-test", type=int, default=None,
                   help="probes on their own draw of N test questions per dataset (labels: the target's answers)")
    p.add_argument("--probe-properties", default=None, help="comma-separated properties to probe (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/self_prediction", help="run directory (rerun to resume)")
    return p


def _info(name, loaded) -> dict:
    from introspect_mech.models import FALLBACK_CHAT_TEMPLATE

    fallback = loaded.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    return {"name": name or "smollm2-135m-instruct", "n_layers": loaded.n_layers, "d_model": loaded.d_model,
            "chat_template": "fallback (base model: no template of its own)" if fallback else "model's own",
            "flag": "BASE model with the fallback template: cross-prediction is confounded by format" if fallback else None}


def main(argv: list[str] | None = None) -> dict:
    from introspect_mech import load_model
    from introspect_mech.studies.self_prediction import PRESETS, run_study

    a = build_parser().parse_args(argv)
    cfg = PRESETS[a.preset].replace(seed=a.seed, shift=not a.no_shift, probes=not a.no_probes)
    if a.probe_n_test is not None:
        cfg = cfg.replace(probe_n_test=a.probe_n_test)
    if a.probe_properties:
        cfg = cfg.replace(probe_properties=tuple(a.probe_properties.split(",")))
    for k in ("n_train", "n_test", "n_shift"):
        if getattr(a, k) is not None:
            cfg = cfg.replace(**{k: getattr(a, k)})
    if a.lr is not None or a.epochs is not None:
        ov = {k: v for k, v in (("lr", a.lr), ("epochs", a.epochs)) if v is not None}
        cfg = cfg.replace(finetune=cfg.finetune.replace(**ov))

    def loader(name):
        return lambda: load_model(name, device=a.device)

    load_a = loader(a.model)
    models, seeds, info = {"A": load_a}, {"A": a.seed}, {"A": _info(a.model, load_a())}
    if a.other == "twin":
        models["B"], seeds["B"] = load_a, a.seed + 1
        info["B"] = {**info["A"], "twin": f"model A again, its finetunes seeded {a.seed + 1}: a control with the "
                                          "same base weights, not a second model"}
    elif a.other != "none":
        models["B"], seeds["B"] = loader(a.other), a.seed
        info["B"] = _info(a.other, models["B"]())
    res = run_study(a.out, models=models, model_info=info, config=cfg, data_dir=a.data_dir, seeds=seeds)
    for key, s in res["scores"].items():
        e, m = s["accuracy"], s["mode_baseline"]
        if e["value"] is not None:
            print(f"{key:28s} accuracy {e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] n={e['n']}  "
                  f"mode {m['value']:.3f}  (non-compliant hypotheticals {s['n_hypothetical_noncompliant']})")
    for key, c in res["comparisons"].items():
        d = c["self_minus_cross"]
        if d.get("value") is not None:
            print(f"{key}: self - cross {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] on {c['n_common']} items")
    for n, sh in (res.get("shift") or {}).items():
        print(f"shift {n}: {sh['n_changed']} changed items; matches new {sh['matches_new']['value']}, "
              f"old {sh['matches_old']['value']}")
    print(json.dumps({"results": f"{a.out}/results.json"}))
    return res


if __name__ == "__main__":
    main()
