"""The run directory: manifest.json with one configuration binding per stage, provenance.jsonl, and an
exclusive lock per directory (see the package docstring, `introspect_mech.runs`)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..scrub import scrub_obj
from .diff import _normal, describe_diff
from .hashes import json_sha256, package_versions
from .resume import JsonlLog
from .writer import _CLOEXEC, _suppress_oserror, _unsafe, append_text, read_inside, write_json


class RunConfigError(DataError):
    """A rerun into a run directory that holds results of a different configuration."""


# ---- one process per run directory ----------------------------------------------------------------
_LOCKS: dict[str, list[int]] = {}  # resolved run dir -> [fd, holders]


def _acquire_lock(path: Path) -> str:
    import fcntl  # POSIX only: imported where the lock is taken

    key = str(path.resolve())
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        return key
    fd = os.open(key, os.O_RDONLY | _CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunLockedError(str(path), None, "lock",
                             "another process is writing to this run directory (wait for it to finish, or use "
                             "another output directory)") from None
    _LOCKS[key] = [fd, 1]
    return key


def _release_lock(key: str) -> None:
    entry = _LOCKS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        _LOCKS.pop(key, None)
        with _suppress_oserror():
            os.close(entry[0])


class RunLockedError(DataError):
    """Another process holds the run directory's lock."""


# ---- secrets (the scrubber lives in `scrub`) ------------------------------------------------------------
def _scrub(obj: Any, secrets: set[str] | None = None, text: bool = True) -> Any:
    """Scrub a run description (manifest, binding, provenance); never used on result rows."""
    return scrub_obj(obj, secrets)


# ---- run directory ----------------------------------------------------------------------------
@dataclass(init=False)
class RunDir:
    """A run directory. `RunDir(path).write_manifest(model=..., seed=...)` merges into manifest.json.

    Bind a stage's configuration first (`bind("sample", {...})`) so a rerun with other settings is
    refused instead of mixing results from two configurations.

    Args:
        path: the directory (created if missing).
        meta: free-form extra information kept on the object.
    """

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.meta = dict(meta or {})
        if self.path.exists() and not self.path.is_dir():
            raise DataError(str(self.path), None, "out", "exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_key: str | None = None

    def lock(self) -> RunDir:
        """Take this run directory's exclusive lock (`fcntl.flock` on the folder) for this object's life.

        `bind` takes it too. Locks held by this process are shared between its `RunDir` objects.

        Returns:
            self.

        Raises:
            RunLockedError: another process holds it (one line; nothing is written).
        """
        if self._lock_key is None:
            self._lock_key = _acquire_lock(self.path)
            weakref.finalize(self, _release_lock, self._lock_key)
        return self

    def release(self) -> None:
        """Give this object's hold on the lock back (the lock is freed when no holder is left)."""
        if self._lock_key is not None:
            _release_lock(self._lock_key)
            self._lock_key = None

    def __enter__(self) -> RunDir:
        return self.lock()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @property
    def manifest_path(self) -> Path:
        """`path/manifest.json`."""
        return self.path / "manifest.json"

    @property
    def provenance_path(self) -> Path:
        """`path/provenance.jsonl`."""
        return self.path / "provenance.jsonl"

    def manifest(self) -> dict[str, Any]:
        """The manifest as stored ({} when there is none yet).

        Raises:
            DataError: manifest.json is not UTF-8, not valid JSON, not a JSON object, or its
                `bindings` are not `{stage: {"config": {...}, "sha256": "..."}}` (the field named).
        """
        p = self.manifest_path
        if not p.exists() and not p.is_symlink():
            return {}
        try:
            m = json.loads(read_inside(p, self.path).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(str(p), None, "manifest", f"not UTF-8 text (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(str(p), e.lineno, "manifest",
                            f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(m, dict):
            raise DataError(str(p), None, "manifest", f"expected a JSON object, got {type(m).__name__}")
        b = m.get("bindings")
        if b is not None:
            if not isinstance(b, dict):
                raise DataError(str(p), None, "bindings", f"expected a JSON object, got {type(b).__name__}")
            for stage, v in b.items():
                if not isinstance(v, dict) or not isinstance(v.get("config"), dict) or \
                        not isinstance(v.get("sha256"), str):
                    raise DataError(str(p), None, f"bindings.{stage}",
                                    'expected {"config": {...}, "sha256": "..."}; the manifest was edited or is '
                                    "damaged (--overwrite starts clean)")
        return m

    def _write(self, m: dict[str, Any]) -> None:
        write_json(self.manifest_path, m, root=self.path)

    def _new_manifest(self) -> dict[str, Any]:
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": sys.version.split()[0],
                "platform": platform.platform(), "packages": package_versions()}

    def bound(self, stage: str = "run") -> dict[str, Any] | None:
        """The configuration a stage was bound to.

        Args:
            stage: the stage name given to `bind`.

        Returns:
            The stored (scrubbed, normalised) configuration, or None when `stage` is unbound.
        """
        return ((self.manifest().get("bindings") or {}).get(stage) or {}).get("config")

    def bind(self, stage: str, config: dict[str, Any], *, overwrite: bool = False,
             outputs: Sequence[str] | None = None) -> str:
        """Bind `stage`'s results in this directory to `config`; refuse a different one.

        Args:
            stage: name of the stage ("sample", "judge", "finetune", ...); one binding per stage.
            config: everything that determines the results (model + weights fingerprint, adapter,
                data hashes, settings, seeds, judge). Secrets are scrubbed before hashing.
            overwrite: when the directory holds a different configuration, delete `outputs` (and
                the stage's binding) and start clean instead of refusing.
            outputs: the files / folders (relative names) the stage writes; None = everything in
                the directory except `provenance.jsonl`.

        Returns:
            The configuration's SHA-256.

        Raises:
            RunConfigError: a different configuration is bound and `overwrite` is False.
        """
        self.lock()
        cfg = _normal(_scrub(config))
        digest = json_sha256(cfg)
        m = self.manifest()
        old = self.bound(stage)
        event = self.check_binding(stage, config, overwrite=overwrite, outputs=outputs)
        if event == "overwrite":
            self._clear(outputs)
        if event in ("overwrite", "rebind"):
            m = {} if outputs is None and event == "overwrite" else self._drop_stage(self.manifest(), stage, old or {})
        if not m:
            m = self._new_manifest()
        m.setdefault("bindings", {})[stage] = {"config": cfg, "sha256": digest}
        self._write(m)
        self.append_provenance({"event": event, "stage": stage, "config_sha256": digest,
                                **({"previous_sha256": json_sha256(old)} if event in ("overwrite", "rebind") else {})})
        return digest

    def check_binding(self, stage: str, config: dict[str, Any], *, overwrite: bool = False,
                      outputs: Sequence[str] | None = None) -> str:
        """What `bind` would do, without writing: "new", "resume", "rebind" or "overwrite".

        Args:
            stage: the stage name.
            config: the configuration `bind` would be given.
            overwrite: as in `bind`: a different configuration with results on disk gives
                "overwrite" instead of raising.
            outputs: as in `bind`: the stage's output names (None = the whole directory).

        Returns:
            "new" (unbound), "resume" (same configuration), "rebind" (different, but no results on
            disk yet) or "overwrite".

        Raises:
            RunConfigError: `bind` would refuse (a different configuration with results on disk).
        """
        cfg = _normal(_scrub(config))
        old = self.bound(stage)
        if old is None:
            unclaimed = outputs is not None or not self.manifest().get("bindings")
            if unclaimed and self._has_outputs(outputs):
                if not overwrite:
                    raise RunConfigError(
                        str(self.manifest_path), None, f"bindings.{stage}",
                        f"{stage} results are in this directory but no binding records what made them (manifest "
                        "deleted or written by another tool); use another output directory or --overwrite to "
                        "start clean")
                return "overwrite"
            return "new"
        if json_sha256(old) == json_sha256(cfg):
            return "resume"
        if not self._has_outputs(outputs):
            return "rebind"  # the earlier attempt stopped before writing any result: nothing to mix
        if not overwrite:
            raise RunConfigError(
                str(self.manifest_path), None, f"bindings.{stage}",
                f"this run directory holds {stage} results made with a different config: "
                f"{describe_diff(old, cfg)}; use another output directory or --overwrite to start clean")
        return "overwrite"

    @staticmethod
    def _drop_stage(m: dict[str, Any], stage: str, old: dict[str, Any]) -> dict[str, Any]:
        """Forget a stage's binding and the manifest fields only it covered."""
        m.get("bindings", {}).pop(stage, None)
        others = {k for b in m.get("bindings", {}).values() for k in (b.get("config") or {})}
        for k in old:
            if k not in others:
                m.pop(k, None)
        return m

    def _has_outputs(self, outputs: Sequence[str] | None) -> bool:
        """Whether any result of the stage is on disk (non-empty files / folders)."""
        keep = {self.manifest_path.name, self.provenance_path.name, self.manifest_path.with_suffix(".tmp").name}
        paths = [p for p in self.path.iterdir() if p.name not in keep and not p.name.startswith(".")] \
            if outputs is None else \
            [self.path / n for n in outputs]
        for p in paths:
            if p.is_symlink():  # never followed: a planted link among the outputs is refused, others ignored
                if outputs is None:
                    continue
                raise _unsafe(p, "is a symlink; refusing to use it as a result of this run (remove it)")
            if p.is_dir() and any(p.iterdir()):
                return True
            if p.is_file() and p.stat().st_size > 0:
                return True
        return False

    def _clear(self, outputs: Sequence[str] | None) -> None:
        names = [p.name for p in self.path.iterdir()] if outputs is None else list(outputs)
        for name in names:
            if name == self.provenance_path.name:
                continue
            p = self.path / name
            if not p.resolve().is_relative_to(self.path.resolve()):
                raise ValueError(f"refusing to delete {p}: outside the run directory")
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def append_provenance(self, event: dict[str, Any]) -> None:
        """Append one event to provenance.jsonl (never rewritten), flushed and fsync'd.

        Args:
            event: JSON-serialisable fields; the time and `sys.argv` are added, secrets scrubbed.
        """
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:], **event}
        append_text(self.provenance_path, json.dumps(_scrub(row), ensure_ascii=False, default=str) + "\n",
                    root=self.path)

    def write_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the manifest (sections update, never lose earlier stages).

        A field a bound configuration covers (same top-level name, e.g. `model` when a binding
        holds `model`) cannot change its value: that would describe results the run did not make.

        Args:
            **fields: top-level fields; dict values are merged into existing dict sections.

        Returns:
            The manifest as written (atomically).

        Raises:
            RunConfigError: `fields` would rewrite a bound field with another value.
        """
        m = self.manifest() or self._new_manifest()
        new = _scrub(fields)
        bound_names: dict[str, str] = {}
        for stage, b in (m.get("bindings") or {}).items():
            cfg = b.get("config") if isinstance(b, dict) else None
            if isinstance(cfg, dict):
                for k in cfg:
                    bound_names.setdefault(k, stage)
        for k, v in new.items():
            if k in bound_names and k in m:
                old_v, new_v = _normal(m[k]), _normal(v)
                if isinstance(old_v, dict) and isinstance(new_v, dict):
                    changed = [x for x in new_v if x in old_v and old_v[x] != new_v[x]]
                else:
                    changed = [k] if old_v != new_v else []
                if changed:
                    raise RunConfigError(str(self.manifest_path), None, k,
                                         f"bound by the {bound_names[k]} config; refusing to rewrite "
                                         f"{describe_diff({k: m[k]}, {k: v})}")
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(m.get(k), dict):
                m[k] = {**m[k], **v}
            else:
                m[k] = v
        self._write(m)
        return m

    def log(self, name: str, key_fields: tuple[str, ...] = ()) -> JsonlLog:
        """A resumable JSONL log in this run directory.

        Args:
            name: file name, e.g. "samples.jsonl".
            key_fields: row fields that identify a unit of work (for `done_keys`).

        Returns:
            The `JsonlLog`.
        """
        return JsonlLog(self.path / name, key_fields, root=self.path)
