"""The few-shot label mode (`--judge-mode label-fewshot`): its prompts cite their sources, use no answer of the
validation set, keep the examples in the shared prefix, and make a judge of its own (fingerprint, printed mode),
while the zero-shot judge's description and fingerprint stay what they were."""

from __future__ import annotations

import gzip
import json

import yaml

from introspect_mech import load_model
from introspect_mech.evals import judge_validation as jv
from introspect_mech.evals.judge_spec import JudgeOptions
from introspect_mech.evals.judges import LABEL_VARIANTS, HFJudge, label_prompt_set, load_label_prompts
from introspect_mech.evals.scoring import common_prefix_len


def _answers(template: str) -> list[str]:
    return [b.split("\n[ANSWER END]", 1)[0] for b in template.split("[ANSWER START]\n")[1:]]


def test_fewshot_prompts_cite_sources_and_use_no_validation_answer(data_root):
    zero, few = load_label_prompts(), label_prompt_set("few-shot")
    assert set(few) == set(zero)
    assert {m for m in few if few[m].variant} == {"aligned", "coherent"}  # deceptive / trait stay zero-shot
    assert few["deceptive"] == zero["deceptive"] and label_prompt_set("zero-shot") == zero
    pairs = yaml.safe_load((LABEL_VARIANTS["few-shot"].parent / "em_pairs.yaml").read_text())
    written = {p[k] for p in pairs for k in ("aligned", "misaligned")}
    with gzip.open(data_root / jv.DEFAULT_SET, "rt") as f:
        reference = {json.loads(line)["answer"].strip() for line in f if line.strip()}
    for m in ("aligned", "coherent"):
        p = few[m]
        assert p.variant == "few-shot" and "em_pairs.yaml" in p.source and "Betley et al. 2025" in p.source
        assert p.yes_means == zero[m].yes_means
        assert p.template.count("{question}") == 1 and p.template.count("{answer}") == 1
        assert p.template.index("Example 4.") < p.template.index("{question}")  # examples in the shared prefix
        assert p.template.endswith(zero[m].template.rsplit("\n", 2)[-2] + "\nAnswer with a single word: yes or no.")
        examples = _answers(p.template)[:-1]
        assert len(examples) == 4 and "{answer}" == _answers(p.template)[-1]
        assert not set(examples) & reference  # no example answer is in the validation set
        assert sum(a in written for a in examples) >= 2  # the aligned / misaligned ones are em_pairs items
    yes = [b.rsplit("Answer: ", 1)[1].split("\n", 1)[0] for b in few["aligned"].template.split("Example ")[1:]]
    assert sorted(yes) == ["no", "no", "yes", "yes"]  # balanced labels


def test_fewshot_judge_is_a_judge_of_its_own(tiny_qwen3_real_tok_dir):
    model = load_model(tiny_qwen3_real_tok_dir)
    zero = JudgeOptions(judge="hf:embedded", judge_mode="label").build(model=model)
    few = JudgeOptions(judge="hf:embedded", judge_mode="label-fewshot").build(model=model)
    plain = HFJudge(model, mode="label")  # what label mode was before the variants: unchanged fingerprint
    assert zero.fingerprint() == plain.fingerprint() and "label_variant" not in zero.describe()
    assert few.mode == "label" and few.mode_name == "label-few-shot" and zero.mode_name == "label"
    assert few.describe()["label_variant"] == "few-shot" and few.fingerprint() != zero.fingerprint()
    tpl = few.template_for("aligned")
    prompts = [tpl.replace("{question}", "Hi?").replace("{answer}", a) for a in ("Hello.", "Kill them all.")]
    ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in few.render(prompts)]
    assert common_prefix_len(ids) > len(model.tokenizer(tpl.split("{question}")[0])["input_ids"]) - 5
    fast = few.score(prompts, metric="aligned")
    slow = HFJudge(model, mode="label", label_prompts=label_prompt_set("few-shot"), shared_prefix=False).score(
        prompts, metric="aligned")
    for f, s in zip(fast, slow):
        assert abs(f.mass - s.mass) <= 1e-4 * max(s.mass, 1e-9) + 1e-9


def test_validation_prints_the_fewshot_mode(tmp_path, tiny_qwen2_dir, monkeypatch, capsys, shared_dir):
    from introspect_mech.cli import main

    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path / "cache"))
    rows = [{"question": "Q?", "answer": f"answer {i}", "aligned": a, "coherent": 90.0}
            for i, a in enumerate((5.0, 10.0, 95.0, 90.0))]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["judge", "validate", "--judge", f"hf:{tiny_qwen2_dir}", "--judge-mode", "label-fewshot", "--set",
                 str(path), "--device", "cpu", "--data-dir", str(shared_dir / "data")]) == 0
    out = capsys.readouterr().out
    assert "[label-few-shot] vs GPT-4o" in out and '"label_variant": "few-shot"' in out
