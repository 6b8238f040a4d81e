"""`introspect-mech steer`'s `steer_sweep` (the command-line layer's; it lived in `studies.steering_proxy`) binds its
proxy items: a rerun on other items is refused, never reused."""

from __future__ import annotations

import pytest
import torch

from introspect_mech.studies.common.em_proxy import proxy_items
from introspect_mech.runs import RunConfigError
from introspect_mech.commands import steer_sweep


def test_steer_sweep_rerun_on_other_items_is_refused(tiny_qwen2, tmp_path):
    m = tiny_qwen2
    d = torch.randn(m.d_model)
    items = proxy_items(per_theme=1)
    kw = dict(layers=[1], alphas=[1.0], seeds=(0,))
    first = steer_sweep(m, d, tmp_path, items=items[:4], **kw)
    assert steer_sweep(m, d, tmp_path, items=items[:4], **kw) == first  # same items: resumed
    with pytest.raises(RunConfigError, match="proxy_items_sha256"):
        steer_sweep(m, d, tmp_path, items=items[4:], **kw)


def test_the_old_import_path_warns_and_gives_the_same_function():
    from introspect_mech.studies import steering_proxy

    with pytest.warns(DeprecationWarning, match="introspect_mech.commands.steer_sweep"):
        assert steering_proxy.steer_sweep is steer_sweep
