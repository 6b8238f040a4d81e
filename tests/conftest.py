"""Shared fixtures: tiny random Qwen checkpoints, the embedded model, the canonical data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Shape checking: every annotated function and dataclass of the package is checked at call time by
# jaxtyping + beartype, so a tensor of the wrong shape or dtype fails the test that passes it. The
# hook must be installed before `introspect_mech` is first imported (INTROSPECT_MECH_TYPECHECK=0 skips it).
if os.environ.get("INTROSPECT_MECH_TYPECHECK", "1") != "0":
    from jaxtyping import install_import_hook

    # is_pep484_tower: an int is a valid float (PEP 484's numeric tower), as for a type checker
    install_import_hook("introspect_mech", "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INTROSPECT_MECH_SHARED", REPO.parent / "shared"))
os.environ.setdefault("INTROSPECT_MECH_DATA", str(SHARED / "data"))
# Exact reference tests run in float32 on every CPU: `dtype="auto"` would pick bfloat16 on AMX machines.
os.environ.setdefault("INTROSPECT_MECH_CPU_DTYPE", "float32")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def data_root(shared_dir) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    from introspect_mech.testing import tiny_qwen

    return tiny_qwen(tmp_path_factory.mktemp("tiny_qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    from introspect_mech.testing import tiny_qwen

    return tiny_qwen(tmp_path_factory.mktemp("tiny_qwen3"), arch="qwen3")


@pytest.fixture(scope="session")
def tiny_qwen3_real_tok_dir(tmp_path_factory, shared_dir) -> Path:
    """Tiny Qwen3 with the real Qwen3 tokenizer and chat template (digits split one per token)."""
    from introspect_mech.testing import tiny_qwen

    return tiny_qwen(tmp_path_factory.mktemp("tiny_qwen3_real"), arch="qwen3",
                     tokenizer_dir=shared_dir / "tokenizers" / "qwen3")


@pytest.fixture
def tiny_qwen2(tiny_qwen2_dir):
    from introspect_mech import load_model

    return load_model(tiny_qwen2_dir)


@pytest.fixture
def tiny_qwen3(tiny_qwen3_dir):
    from introspect_mech import load_model

    return load_model(tiny_qwen3_dir)


@pytest.fixture(scope="session")
def embedded():
    """The embedded default model (SmolLM2-135M-Instruct), loaded once per session. Do not mutate
    it in tests (no adapters, no lasting hooks): tests that change weights load their own copy."""
    from introspect_mech import load_model

    return load_model()
