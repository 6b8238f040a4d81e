"""Deprecated: the statistics moved to the core module `introspect_mech.stats`.

`from introspect_mech.evals.stats import bootstrap_ci` (and every other name) still works and
warns with a DeprecationWarning naming the new home.
"""

from __future__ import annotations

import warnings
from typing import Any

from .. import stats as _core


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if hasattr(_core, name):
        warnings.warn(f"introspect_mech.evals.stats.{name} is deprecated: use introspect_mech.stats.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(_core, name)
    raise AttributeError(f"module 'introspect_mech.evals.stats' has no attribute {name!r}")
