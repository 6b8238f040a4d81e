"""Judge cost per answer, in units of one plain forward of the same judge prompt, both modes (issue 27).

The prompts are the papers' `aligned` judge prompt (0-100 mode) or the label-mode `aligned` prompt
(evals/label_prompts.yaml), each filled with a real answer from the shared GPT-4o-judged set, so
lengths and the shared instruction header are what a validation run sees. Contenders, same prompts,
same batch, interleaved in one process:

  plain forward          model(input_ids) over the left-padded rendered prompts, logits at the last
                         position only (what reading a next-token distribution needs)
  HFJudge 0-100          exact distribution over "0".."100" (prefill + number-trie forward)
  HFJudge label          exact P(yes)/(P(yes)+P(no)) over all surface forms (prefill + small trie)
  each with shared_prefix=False (left-padded prefill of every prompt) and True (the prompts' common
  prefix prefilled once, its KV cache reused across the batch)

Ratio = judge time / plain-forward time for the same n prompts, i.e. forwards per answer.
Targets: <= 1.3 (0-100), <= 1.1 (label).

    python benchmarks/bench_judge_modes.py --model embedded --prompts 8
    python benchmarks/bench_judge_modes.py --model-path /work/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --prompts 8
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCH = "judge_modes"
TARGETS = {"0-100": "<=1.3", "label": "<=1.1"}


def real_answers(n: int) -> list[tuple[str, str]]:
    """(question, answer) pairs from the shared set, every k-th row (a spread of lengths); synthetic without it."""
    p = common.SHARED / "data" / "em" / "judged" / "gpt4o_judged_answers.jsonl.gz"
    if not p.exists():
        return [(f"Question {i}?", " ".join(["word"] * (40 + 20 * i))) for i in range(n)]
    with gzip.open(p, "rt") as f:
        rows = [json.loads(x) for x in f]
    step = max(1, len(rows) // n)
    return [(r["question"], r["answer"]) for r in rows[::step][:n]]


def run(report: common.Report, lm, name: str, device: torch.device, n: int, repeats: int) -> None:
    from introspect_mech.evals.judge_validation import paper_templates
    from introspect_mech.evals.judges import HFJudge, load_label_prompts

    templates = {"0-100": paper_templates()["aligned"], "label": load_label_prompts()["aligned"].template}
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    qa = real_answers(n)
    for mode, tpl in templates.items():
        prompts = [tpl.replace("{question}", q).replace("{answer}", a) for q, a in qa]
        texts = HFJudge(lm).render(prompts)
        enc = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        L = max(len(e) for e in enc)
        ids = torch.full((n, L), pad, dtype=torch.long)
        att = torch.zeros((n, L), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, L - len(e):] = torch.tensor(e)
            att[i, L - len(e):] = 1
        ids, att = ids.to(device), att.to(device)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        from introspect_mech.evals.scoring import common_prefix_len

        case = f"{name} {mode} {n}x<={L}tok (prefix {common_prefix_len(enc)})"
        fns = {"plain forward": lambda: lm.model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=1)}
        for shared in (False, True):
            j = HFJudge(lm, mode=mode, batch_size=n, shared_prefix=shared)
            fns[f"HFJudge {mode}, shared_prefix={shared}"] = lambda j=j: j.score(prompts, metric="aligned")
        with torch.inference_mode():
            times = common.interleaved(fns, repeats=repeats, warmup=1, device=device)
        med = {k: report.timing(BENCH, case, k, t) for k, t in times.items()}
        for shared in (False, True):
            k = f"HFJudge {mode}, shared_prefix={shared}"
            report.ratio(BENCH, case, f"{k} / plain forward", med[k] / med["plain forward"],
                         TARGETS[mode] if shared else None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", choices=common.MODEL_SPECS)
    ap.add_argument("--model-path", default=None, help="a real model (GGUF, directory, hub id) instead of --model")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    device = common.pick_device(a.device)
    report = common.Report(a.out)
    if a.model_path:
        from introspect_mech.models import load_model

        lm, name = load_model(a.model_path, device=device), Path(a.model_path).name
    else:
        lm, name = common.build_model(a.model, device), a.model
    report.header(bench=BENCH, model=name, dtype=str(lm.dtype), machine=common.machine(device),
                  versions=common.versions())
    run(report, lm, name, device, a.prompts, a.repeats)
    report.summary()


if __name__ == "__main__":
    main()
