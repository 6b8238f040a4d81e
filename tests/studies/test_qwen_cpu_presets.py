"""Every study the real-Qwen runbook (docs/qwen_runbook.md) starts has a `qwen-cpu` preset that its command line
parses to exactly the preset, names the real Qwen, and keeps the protocol's required sizes (seeds, controls)."""

from __future__ import annotations

import importlib

import pytest

from introspect_mech.cliargs import parse_config

QWEN05 = "qwen2.5-coder-0.5b-instruct"
QWEN15 = "qwen2.5-coder-1.5b-instruct"
STUDIES = ("emergent_misalignment", "model_organisms", "self_prediction", "self_awareness", "persona_vectors",
           "introspection")


def _parse(mod, argv):
    """The config each study's own command line builds from `argv`."""
    from introspect_mech.evals.judge_spec import JudgeOptions

    if hasattr(mod, "config_from_argv"):  # self_prediction, introspection
        got = mod.config_from_argv(argv)
        return got[0]
    if hasattr(mod, "parse_args"):  # persona_vectors
        return mod.parse_args(argv)[0]
    cls = type(mod.PRESETS["qwen-cpu"])
    parser = mod.build_parser()
    groups = [JudgeOptions] if any(a.dest == "judge" for a in parser._actions) else []
    return parse_config(parser, argv, cls, presets=mod.PRESETS, groups=groups)[1]


@pytest.mark.parametrize("name", STUDIES)
def test_qwen_cpu_preset_parses_to_itself(name, tmp_path):
    mod = importlib.import_module(f"introspect_mech.studies.{name}")
    preset = mod.PRESETS["qwen-cpu"]
    cfg = _parse(mod, ["--preset", "qwen-cpu", "--out", str(tmp_path / "run")])
    assert cfg == preset
    assert cfg.model == QWEN05


def test_qwen_cpu_protocol_sizes():
    from introspect_mech.studies import emergent_misalignment as em, introspection as it, model_organisms as mo
    from introspect_mech.studies import self_awareness as sa, self_prediction as sp

    e = em.PRESETS["qwen-cpu"]
    assert e.datasets == ("bad_medical_advice", "good_medical_advice") and e.finetune_preset == "em"
    assert e.temperature == 1.0 and "main" in e.question_sets and e.capability_items > 0 and e.typology == "activations"
    m = mo.PRESETS["qwen-cpu"]
    assert m.n_random >= 3 and m.save_every >= 1
    li = sp.PRESETS["qwen-cpu"]
    assert li.other == QWEN15
    t = sa.PRESETS["qwen-cpu"]
    assert len(t.seeds) >= 3 and {"risky", "safe"} <= set(t.conditions)
    assert it.PRESETS["qwen-cpu"].model == QWEN05
