"""The test suite runs with jaxtyping's import hook + beartype (tests/conftest.py): a tensor of the
wrong shape or a wrong argument type fails at the call, before any work."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("INTROSPECT_MECH_TYPECHECK", "1") == "0",
                                reason="shape checking switched off")


def test_hook_is_installed():
    from introspect_mech import probes

    assert getattr(probes.mean_diff, "__wrapped__", None) is not None  # decorated by jaxtyping/beartype


def test_wrong_shape_raises():
    from introspect_mech.probes import mean_diff

    pos, neg = torch.randn(5, 3, 8), torch.randn(4, 3, 8)
    assert mean_diff(pos, neg).vectors.shape == (3, 8)
    with pytest.raises(TypeError):  # d_model differs between the classes
        mean_diff(pos, torch.randn(4, 3, 9))
    with pytest.raises(TypeError):  # activations are [n, layer, d_model] or [n, d_model], not 4-d
        mean_diff(torch.randn(5, 3, 2, 8), torch.randn(4, 3, 2, 8))


def test_wrong_direction_shape_raises(tiny_qwen2):
    from introspect_mech import steering

    with pytest.raises(TypeError):  # a direction is [d_model] or [layer, d_model], not 3-d
        steering.add(tiny_qwen2, torch.randn(2, 2, tiny_qwen2.d_model), layers=[0], alpha=1.0)
    with pytest.raises(TypeError):  # the shape of the activations and the direction must agree
        steering.component(torch.randn(4, 8), torch.randn(9))


def test_dataclass_fields_are_checked():
    from introspect_mech.direction import Direction

    with pytest.raises(TypeError):  # norms must be [layer] for [layer, d_model] vectors
        Direction(torch.randn(3, 8), torch.randn(3, 1), [0, 1, 2])
