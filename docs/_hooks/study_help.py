"""mkdocs hook: a line `<!-- study-help: NAME -->` in a page becomes the text that
`introspect-mech study NAME --help` prints (generated from the study's config dataclass at build time,
so the options, defaults and help texts on the page are the command line's own)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
from pathlib import Path
from typing import Any

_MARK = re.compile(r"^<!-- study-help: ([\w-]+) -->$", re.MULTILINE)


def on_config(config: Any) -> Any:
    """Make `src/` importable (a checkout without `pip install -e .`)."""
    src = str(Path(config.config_file_path).resolve().parent / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return config


def study_help(name: str) -> str:
    """The `--help` text of `introspect-mech study <name>` (the study module's `main(["--help"])`)."""
    from introspect_mech.cli import STUDIES

    if name not in STUDIES:
        raise ValueError(f"study-help: unknown study {name!r}; studies: {', '.join(STUDIES)}")
    module = importlib.import_module(f"introspect_mech.studies.{STUDIES[name]}")
    buf = io.StringIO()
    argv0, columns = sys.argv[0], os.environ.get("COLUMNS")
    sys.argv[0], os.environ["COLUMNS"] = f"introspect-mech study {name}", "100"
    try:
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            module.main(["--help"])
    finally:
        sys.argv[0] = argv0
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    text = buf.getvalue().strip()
    if not text.startswith("usage:"):
        raise RuntimeError(f"study-help: `introspect-mech study {name} --help` printed no usage")
    return text


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace every `<!-- study-help: NAME -->` line by a text block with that study's `--help`."""
    return _MARK.sub(lambda m: "```text\n" + study_help(m.group(1)) + "\n```", markdown)
