"""Options generated from config dataclasses: names, types, help from the source, only-what-was-set."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from introspect_mech.cliargs import (
    add_config_args, add_dataclass_args, config_from_args, config_parser, dataclass_overrides, field_help, parse_config,
)


@dataclass
class Cfg:
    lr: float = 1e-5  # learning rate
    batch_size: int = 16
    use_rslora: bool = True  # rank-stabilised scaling
    schedule: Literal["linear", "cosine"] = "linear"
    layers: tuple[int | float, ...] | None = None  # restrict to these layers
    betas: tuple[float, float] = (0.9, 0.999)
    targets: tuple[str, ...] = ("q_proj",)
    max_steps: int | None = None
    name: str = field(default="x", metadata={"help": "a name"})


def _parse(argv):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Cfg)
    return dataclass_overrides(p.parse_args(argv), Cfg)


def test_only_given_options_are_returned_with_field_types():
    assert _parse([]) == {}
    got = _parse(["--lr", "3e-4", "--batch-size", "4", "--no-use-rslora", "--schedule", "cosine", "--layers", "3",
                  "0.5", "--betas", "0.8", "0.95", "--targets", "q_proj", "v_proj", "--max-steps", "none"])
    assert got == {"lr": 3e-4, "batch_size": 4, "use_rslora": False, "schedule": "cosine", "layers": (3, 0.5),
                   "betas": (0.8, 0.95), "targets": ("q_proj", "v_proj"), "max_steps": None}
    assert type(got["layers"][0]) is int and _parse(["--layers", "none"]) == {"layers": None}


def test_bad_values_are_argparse_errors(capsys):
    for argv in (["--batch-size", "four"], ["--schedule", "step"], ["--betas", "0.9"]):
        with pytest.raises(SystemExit):
            _parse(argv)
    assert "invalid" in capsys.readouterr().err


def test_help_comes_from_the_source_and_metadata():
    helps = field_help(Cfg)
    assert helps["lr"] == "learning rate" and helps["layers"] == "restrict to these layers"
    assert helps["name"] == "a name" and "batch_size" not in helps


@dataclass(kw_only=True)
class Base:
    out: str  # where results go
    seed: int = 0  # random seed


@dataclass(kw_only=True)
class Child(Base):
    seed: int = 3
    extra: bool = False  # one more


def test_fields_without_default_are_required_and_help_follows_the_bases(capsys):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Child)
    with pytest.raises(SystemExit):
        p.parse_args(["--seed", "1"])
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert Child(**dataclass_overrides(p.parse_args(["--out", "o"]), Child)) == Child(out="o", seed=3)
    assert field_help(Child) == {"out": "where results go", "seed": "random seed", "extra": "one more"}
    help_text = " ".join(p.format_help().split())
    assert "where results go (required)" in help_text and "random seed (default: 3)" in help_text


def test_train_config_round_trips():
    from introspect_mech.finetune.config import TrainConfig, preset

    p = argparse.ArgumentParser()
    names = add_dataclass_args(p, TrainConfig)
    assert {"lr", "layers", "adam_betas", "target_modules", "use_rslora"} <= set(names)
    over = dataclass_overrides(p.parse_args(["--lr", "2e-4", "--layers", "15", "--no-progress"]), TrainConfig)
    cfg = preset("em", **over)
    assert (cfg.lr, cfg.layers, cfg.progress, cfg.r) == (2e-4, 15, False, 32)
    for argv, want in ((["--layers", "all"], "all"), (["--layers", "3", "5"], (3, 5)), (["--layers", "none"], None)):
        assert dataclass_overrides(p.parse_args(argv), TrainConfig)["layers"] == want
    for argv in (["--layers", "3", "all"], ["--layers", "3", "none"]):  # a word or none stands alone
        with pytest.raises(ValueError, match="must be the only value"):
            dataclass_overrides(p.parse_args(argv), TrainConfig)


def test_presets_then_the_options_given():
    presets = {"small": Cfg(lr=1e-3, batch_size=2), "big": Cfg(lr=1e-5, batch_size=64)}
    p = argparse.ArgumentParser()
    add_config_args(p, Cfg, presets=presets, default_preset="small")
    assert config_from_args(p.parse_args([]), Cfg, presets=presets) == presets["small"]
    got = config_from_args(p.parse_args(["--preset", "big", "--batch-size", "8"]), Cfg, presets=presets)
    assert (got.lr, got.batch_size) == (1e-5, 8)
    assert config_from_args(p.parse_args(["--lr", "0.5"]), Cfg, presets=presets, name="fixed").name == "fixed"
    with pytest.raises(SystemExit):
        p.parse_args(["--preset", "huge"])
    assert "(default: 0.001)" in p.format_help() and "(default: 1e-05)" not in p.format_help()  # the preset's
    q = argparse.ArgumentParser()
    add_config_args(q, Cfg)  # no presets: no --preset, the class defaults
    assert config_from_args(q.parse_args(["--lr", "0.5"]), Cfg) == Cfg(lr=0.5)


def test_judge_options_one_spec():
    from introspect_mech.evals.judge_spec import JudgeOptions

    p = argparse.ArgumentParser()
    add_dataclass_args(p, JudgeOptions)
    o = config_from_args(p.parse_args(["--judge", "api:http://localhost:8000/v1|gpt-x", "--judge-timeout", "5"]),
                         JudgeOptions)
    assert o.kind == "api" and o.judge_timeout == 5.0
    j = o.build()
    assert j.describe()["model"] == "gpt-x" and j.timeout == 5.0 and o.build_categorical(j) is j  # the API judge labels deception itself
    assert JudgeOptions().build() is None and JudgeOptions("hf:embedded").kind == "hf"
    for bad in ("api:http://x", "gpt-4o", "hf"):
        with pytest.raises(ValueError, match="expected none, hf:"):
            JudgeOptions(bad)


@dataclass
class Stages:
    stages: tuple[Literal["a", "b", "c"], ...] = ("a", "b", "c")  # stages to run


def test_tuple_of_literal_takes_several_choices():
    p = argparse.ArgumentParser()
    add_config_args(p, Stages)
    assert config_from_args(p.parse_args(["--stages", "c", "a"]), Stages) == Stages(stages=("c", "a"))
    assert config_from_args(p.parse_args([]), Stages) == Stages()
    assert "stages to run" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--stages", "a", "d"])


def test_config_parser_and_parse_config():
    from dataclasses import dataclass as dc

    @dc
    class Extra:
        tag: str = "x"

        def __post_init__(self):
            if self.tag == "bad":
                raise ValueError("tag: bad")

    presets = {"small": Cfg(lr=1e-3)}
    p = config_parser(Cfg, description="d", out="runs/x", presets=presets, default_preset="small", groups=[(Extra, "extra")])
    ns, cfg, (extra,) = parse_config(p, ["--batch-size", "8", "--tag", "y"], Cfg, presets=presets, groups=[Extra])
    assert ns.out == "runs/x" and cfg == Cfg(lr=1e-3, batch_size=8) and extra == Extra("y")
    with pytest.raises(SystemExit) as e:  # a dataclass's own check: a usage error
        parse_config(p, ["--tag", "bad"], Cfg, presets=presets, groups=[Extra])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="tag: bad"):
        parse_config(p, ["--tag", "bad"], Cfg, presets=presets, groups=[Extra], usage_errors=False)
