"""The main job's printing and reporting helpers: plain-text tables, the self-report floor, the summary notes,
and the capture of third-party warnings into the run directory."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from ... import runs as _runs


class Stages:
    """Prints numbered stage headers with elapsed times (unused by the job itself: the study runner prints its
    stage headers now).

    Args:
        total: the number of stages (the "/N" of each header).
    """

    def __init__(self, total: int):
        self.total, self.k, self.t0 = total, 0, time.perf_counter()

    def __call__(self, title: str) -> None:
        self.k += 1
        print(f"\n[{self.k}/{self.total}] {title}  (t={time.perf_counter() - self.t0:.0f}s)", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


SELF_REPORT_MIN_MASS = 0.25  # the judges' abstention floor: below it, the model did not answer with a number


def self_report(sr: dict[str, Any], min_mass: float = SELF_REPORT_MIN_MASS) -> tuple[dict[str, Any], str, str]:
    """A self-rating as the job reports it: withheld when the mass on the numbers is below the floor.

    A model that puts 4-13 % of its mass on the numbers has not rated itself; the renormalised expectation
    over that sliver is not a self-report, so it is neither printed nor written as a value.

    Args:
        sr: `evals.metrics.self_rating`'s result (`mean` estimate, `mean_mass`).
        min_mass: the floor.

    Returns:
        (estimate for the summary row, its note, the table cell).
    """
    mass = float(sr["mean_mass"])
    if mass < min_mass:
        gone = {"value": None, "lo": None, "hi": None, "n": sr["mean"].get("n", 0)}
        return gone, f"no self-report: mass on numbers {mass:.2f} < {min_mass}", f"none (mass {mass:.2f})"
    return sr["mean"], f"mass on numbers {mass:.2f}", _ci(sr["mean"])


def _ci(est: dict[str, Any]) -> str:
    if est.get("value") is None:
        return "n/a"
    return f"{est['value']:.3f} [{est['lo']:.3f}, {est['hi']:.3f}]"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """A plain-text table: a header line, a rule, one line per row (columns padded to their widest cell).

    Args:
        headers: column names (with units).
        rows: the cells (str() of each).
        indent: prefix of every line.

    Returns:
        The table as one string (no trailing newline).
    """
    cells = [[str(c) for c in r] for r in rows]
    width = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: indent + "  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip()  # noqa: E731
    return "\n".join([line(list(headers)), indent + "  ".join("-" * w for w in width)] + [line(r) for r in cells])


class _CaptureWarnings:
    """Third-party warnings (Python `warnings` and transformers' logger) go to `warnings.jsonl` in the
    run directory instead of the terminal, where they would break progress-bar lines."""

    def __init__(self, log: Any):
        self.log, self.n = log, 0

    def __enter__(self) -> "_CaptureWarnings":
        self._show, self._catch = warnings.showwarning, warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("default")

        def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            self._write("warning", f"{category.__name__}: {message}", f"{filename}:{lineno}")
        warnings.showwarning = show
        cap = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                cap._write(record.levelname.lower(), record.getMessage(), f"{record.name}:{record.lineno}")
        self._handler, self._loggers = Handler(level=logging.WARNING), []
        for name in ("transformers", "peft", "torch"):
            lg = logging.getLogger(name)
            self._loggers.append((lg, lg.propagate, list(lg.handlers)))
            lg.handlers = [self._handler]
            lg.propagate = False
        return self

    def _write(self, level: str, message: str, where: str) -> None:
        self.n += 1
        self.log.append({"level": level, "message": message, "where": where, "time": time.strftime("%H:%M:%S")})

    def __exit__(self, *exc: Any) -> None:
        warnings.showwarning = self._show
        self._catch.__exit__(*exc)
        for lg, prop, handlers in self._loggers:
            lg.handlers, lg.propagate = handlers, prop


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite a small derived results file atomically (the raw logs are the resumable part)."""
    _runs.write_jsonl(path, rows, default=float)




class Notes:
    """The summary rows a stage adds (`summary.jsonl` is written from all stages' notes by the last stage).

    The rows are made JSON-plain as `summary.jsonl` writes them (`default=float`), so a stage's stored result
    holds exactly what the file will hold.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, name: str, value: Any, est: dict | None = None, text: str = "") -> None:
        row = {"name": name, "value": value if est is None else est["value"], "note": text}
        if est is not None:
            row.update(ci_lo=est["lo"], ci_hi=est["hi"], n=est["n"],
                       **{k: est[k] for k in ("unit", "method", "measure") if est.get(k) is not None})
        self.rows.append(json.loads(json.dumps(row, default=float)))

    def result(self, **more: Any) -> dict[str, Any]:
        """The stage's result: its summary rows plus `more`.

        Args:
            **more: further entries of the result.
        """
        return {"summary": self.rows, **more}
