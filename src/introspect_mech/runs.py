"""Run directories: a manifest bound to the configuration, plus JSONL results appended as produced.

Every stage (finetune, sample, judge, cache, probe, steer, sae, dashboard) writes into a run
directory with the same convention:

    run_dir/
      manifest.json     model, adapter, data hashes, seeds, judge, package versions (never API keys),
                        and `bindings.<stage>` = {config, sha256}: what each stage's results were made with
      provenance.jsonl  append-only history: one line per bind (new / resume / overwrite)
      *.jsonl           results, one JSON object per line, appended and flushed as produced

Configuration binding (`RunDir.bind`): a stage records everything that determines its results
(model and weights fingerprint, adapter, data hashes, settings, seeds, judge). A rerun into the
same directory with the same configuration resumes; with a different one it is refused by a
one-line `RunConfigError` naming the differing fields, or -- with `overwrite=True` -- the stage's
outputs are deleted and it starts clean. Fields a binding covers cannot be rewritten later through
`write_manifest` either, so a manifest never describes results it did not produce.

`JsonlLog` makes a killed run resumable: rows carry a key, `done_keys()` tells what to skip and
`read()` returns each key once. Reading never rewrites the file: a torn last line is skipped when
read and cut only before the next append; a corrupt line elsewhere is a one-line `DataError`.

One writer: every file is written through `append_text`, `write_bytes` / `write_text` /
`write_json` / `write_jsonl`, `save_tensors` or `staged_dir`, which never follow a symlink, refuse a
target outside the run directory, make their own temp files (O_EXCL) and publish with an atomic
`os.replace`. `bind` takes an exclusive `flock` on the run directory (`RunLockedError` for a second
process). Results on disk without a binding are never adopted.

Secrets (`scrub`) are redacted from manifests, bindings and provenance, never from result rows.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import stat
import sys
import time
import weakref
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .errors import DataError
from .scrub import (  # noqa: F401  (re-exported: the scrubber's public names were runs.* before)
    REDACTED, env_names, looks_like_secret, register_secret_env, scrub_obj, scrub_text, secret_values,
)

PACKAGES = (
    "introspect_mech", "torch", "transformers", "peft", "transformer-lens", "sae-lens",
    "nnsight", "plotly", "scikit-learn", "safetensors", "gguf", "numpy", "openai",
)
class RunConfigError(DataError):
    """A rerun into a run directory that holds results of a different configuration."""


class UnsafePathError(DataError):
    """A write (or read) that would follow a symlink or land outside its run directory."""


# ---- the one writer ------------------------------------------------------------------------------
# Every file the toolkit writes goes through these functions. They never follow a symlink at the
# target (O_NOFOLLOW), refuse a target whose folder resolves outside `root` (the run directory), make
# their own temp files (O_EXCL, in the target's folder) and publish them with an atomic os.replace.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _unsafe(path: Path, problem: str) -> UnsafePathError:
    return UnsafePathError(str(path), None, "path", problem)


def safe_target(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Check that `path` may be written: not a symlink, and its folder inside `root`.

    The folder is created (after the check, so a symlinked folder is never created through).

    Args:
        path: the file to write.
        root: the run directory it must stay in (default: the file's own folder).

    Returns:
        `path` as a `Path`.

    Raises:
        UnsafePathError: `path` is a symlink, not a regular file, or resolves outside `root`.
    """
    p = Path(path)
    parent = p.parent
    base = Path(root) if root is not None else parent
    rbase = base.resolve()
    if not parent.resolve().is_relative_to(rbase):
        raise _unsafe(p, f"resolves outside the run directory {base} (a symlinked folder?); refusing to write")
    parent.mkdir(parents=True, exist_ok=True)
    if not parent.resolve().is_relative_to(rbase):  # created through a link planted meanwhile
        raise _unsafe(p, f"resolves outside the run directory {base}; refusing to write")
    if p.is_symlink():
        raise _unsafe(p, "is a symlink; refusing to write through it (remove it or use another output directory)")
    if p.exists() and not p.is_file():
        raise _unsafe(p, "exists and is not a regular file; refusing to write")
    return p


def _open_nofollow(p: Path, flags: int, mode: int = 0o644) -> int:
    try:
        fd = os.open(p, flags | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):
            raise _unsafe(p, "is a symlink; refusing to write through it") from None
        if e.errno == errno.ENXIO:
            raise _unsafe(p, "is not a regular file; refusing to write") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _unsafe(p, "is not a regular file; refusing to write")
    return fd


def append_text(path: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None,
                fsync: bool = True) -> None:
    """Append `text` to a file (created if missing), never through a symlink.

    Args:
        path: the file.
        text: UTF-8 text (usually whole lines ending in a newline).
        root: the run directory it must stay in (default: its folder).
        fsync: flush to disk before returning.
    """
    p = safe_target(path, root)
    fd = _open_nofollow(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = text.encode("utf-8")
        while data:
            n = os.write(fd, data)
            data = data[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes, *, root: str | os.PathLike | None = None,
                fsync: bool = True) -> Path:
    """Replace a file's content atomically: a temp file the writer makes itself, then os.replace.

    A reader sees the old content or the new, never a half file; a symlink at `path` is refused,
    never followed.

    Args:
        path: the file.
        data: its new content.
        root: the run directory it must stay in (default: its folder).
        fsync: flush the temp file before the rename.

    Returns:
        `path`.
    """
    import tempfile

    p = safe_target(path, root)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")  # O_EXCL | O_NOFOLLOW
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if p.is_symlink():  # planted between the check and now: rename would replace the link, not follow it
            raise _unsafe(p, "is a symlink; refusing to write through it")
        os.replace(tmp, p)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise
    return p


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, e: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, OSError)


def write_text(path: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None) -> Path:
    """`write_bytes` of UTF-8 text.

    Args:
        path: the file.
        text: its new content.
        root: the run directory it must stay in.

    Returns:
        `path`.
    """
    return write_bytes(path, text.encode("utf-8"), root=root)


def write_json(path: str | os.PathLike, obj: Any, *, root: str | os.PathLike | None = None, indent: int | None = 2,
               default: Any = str) -> Path:
    """`write_bytes` of a JSON document.

    Args:
        path: the file.
        obj: JSON-serialisable object.
        root: the run directory it must stay in.
        indent: JSON indent.
        default: `json.dumps`' default for other objects.

    Returns:
        `path`.
    """
    return write_text(path, json.dumps(obj, indent=indent, default=default, ensure_ascii=False), root=root)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any], *, root: str | os.PathLike | None = None,
                default: Any = str) -> Path:
    """Replace a JSONL file atomically with `rows` (one JSON value per line).

    Args:
        path: the file.
        rows: JSON-serialisable rows.
        root: the run directory it must stay in.
        default: `json.dumps`' default for other objects.

    Returns:
        `path`.
    """
    return write_text(path, "".join(json.dumps(r, default=default, ensure_ascii=False) + "\n" for r in rows),
                      root=root)


def save_tensors(path: str | os.PathLike, tensors: dict[str, Any], *, metadata: dict[str, str] | None = None,
                 root: str | os.PathLike | None = None) -> Path:
    """Save tensors as safetensors through the writer (atomic, no symlink followed; never pickle).

    Args:
        path: the `.safetensors` file.
        tensors: name -> tensor (made contiguous).
        metadata: safetensors string metadata.
        root: the run directory it must stay in.

    Returns:
        `path`.
    """
    from safetensors.torch import save

    return write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata), root=root)


class staged_dir:
    """Build a directory under a temp name (made by the writer) and publish it with a rename.

    `with staged_dir(dest, root=run) as tmp: model.save_pretrained(tmp)`: files are written into a
    fresh folder nobody else could have planted links in; on success an existing `dest` (a real
    folder, never a symlink) is replaced.

    Args:
        dest: the directory to publish.
        root: the run directory it must stay in (default: its parent).
    """

    def __init__(self, dest: str | os.PathLike, *, root: str | os.PathLike | None = None):
        self.dest = Path(dest)
        self.root = root
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        import tempfile

        if self.dest.is_symlink():
            raise _unsafe(self.dest, "is a symlink; refusing to write through it")
        parent = self.dest.parent
        base = Path(self.root) if self.root is not None else parent
        if not parent.resolve().is_relative_to(base.resolve()):
            raise _unsafe(self.dest, f"resolves outside the run directory {base}; refusing to write")
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.dest.name}.", suffix=".tmp"))
        return self.tmp

    def __exit__(self, et: Any, e: Any, tb: Any) -> None:
        assert self.tmp is not None
        if et is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.dest.is_symlink():
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise _unsafe(self.dest, "is a symlink; refusing to write through it")
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old-{os.getpid()}")
            os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.dest)


def read_inside(path: str | os.PathLike, root: str | os.PathLike) -> bytes:
    """Read a file that must be what it claims: a regular file inside `root`, not a symlink out.

    Args:
        path: the file.
        root: the run directory.

    Returns:
        Its bytes.

    Raises:
        UnsafePathError: `path` resolves outside `root` or is not a regular file.
    """
    p = Path(path)
    if not p.resolve().is_relative_to(Path(root).resolve()):
        raise _unsafe(p, f"resolves outside the run directory {root} (a symlink?); refusing to read it")
    fd = os.open(p, os.O_RDONLY | _CLOEXEC | (_NOFOLLOW if not p.is_symlink() else 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _unsafe(p, "is not a regular file; refusing to read it")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


# ---- one process per run directory ----------------------------------------------------------------
_LOCKS: dict[str, list[int]] = {}  # resolved run dir -> [fd, holders]


def _acquire_lock(path: Path) -> str:
    import fcntl

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


# ---- versions and hashes --------------------------------------------------------------------
def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the stack.

    Args:
        names: distribution names.

    Returns:
        `{name: version or None when absent}`.
    """
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes.

    Args:
        path: the file.
        chunk: read size.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_sha256(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (e.g. in-memory records).

    Args:
        obj: the object (keys sorted before hashing).

    Returns:
        The hex digest.
    """
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def adapter_sha256(path: str | os.PathLike | None) -> str | None:
    """Hash of an adapter folder's weights and config.

    Args:
        path: the adapter folder (`adapter_config.json` + `adapter_model.safetensors` or `.bin`),
            or None for no adapter.

    Returns:
        The hex digest over the files present, or None when `path` is None.
    """
    if path is None:
        return None
    p = Path(path)
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (p / name).is_file():
            h.update(name.encode() + file_sha256(p / name).encode())
    return h.hexdigest()


def model_config(model: Any) -> dict[str, Any]:
    """What identifies a loaded model in a configuration binding: name, base fingerprint, adapter.

    Args:
        model: a `LoadedModel` (its `name`, weights and `meta["adapter"]` are read).

    Returns:
        `{"name": ..., **model.fingerprint(), "adapter_sha256": ...}` (the adapter by content,
        so the same adapter under another path binds the same).
    """
    adapter = model.meta.get("adapter")  # by content: the same adapter under another path is the same
    # LoadedModel.fingerprint() is models.model_fingerprint: runs sits below models and never imports it
    return {"name": model.name, **model.fingerprint(), "adapter_sha256": adapter_sha256(adapter)}


# ---- secrets (the scrubber lives in `scrub`; these names stay importable from here) -------------------
def _scrub(obj: Any, secrets: set[str] | None = None, text: bool = True) -> Any:
    """Scrub a run description (manifest, binding, provenance); never used on result rows."""
    return scrub_obj(obj, secrets)


def _env_names(obj: Any) -> list[str]:
    return env_names(obj)


# ---- configuration diffs ------------------------------------------------------------------------
def _normal(obj: Any) -> Any:
    """JSON round trip (tuples -> lists, paths -> str) so stored and new configs compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys: `{"a": {"b": 1}}` -> `{"a.b": 1}` (lists are leaves).

    Args:
        obj: a dict (nested) or a leaf value.
        prefix: dotted name of `obj` itself ("" at the top).

    Returns:
        `{dotted name: leaf value}`; a leaf or empty dict gives `{prefix: obj}`.
    """
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two configurations.

    Args:
        old: the stored configuration.
        new: the new configuration (compared after a JSON round trip, so tuples equal lists).

    Returns:
        The sorted dotted names whose values differ or that exist in only one of them.
    """
    a, b = flatten(_normal(old)), flatten(_normal(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def describe_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """A one-line description of how two configurations differ.

    Args:
        old: the stored configuration.
        new: the new configuration.
        limit: how many differing fields to spell out; the rest are counted ("and N more").

    Returns:
        E.g. `'lr (0.001 -> 0.01), model.name ("a" -> "b")'` (long values shortened).
    """
    a, b = flatten(_normal(old)), flatten(_normal(new))
    keys = config_diff(old, new)

    def short(x: Any) -> str:
        s = json.dumps(x, default=str) if x is not None else "none"
        return s if len(s) <= 40 else s[:18] + "..." + s[-18:]

    parts = [f"{k} ({short(a.get(k))} -> {short(b.get(k))})" for k in keys[:limit]]
    return ", ".join(parts) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


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


class JsonlLog:
    """Append-only JSONL results file with resume.

    `key_fields` name the row fields that identify a unit of work; `done_keys()` returns the set of
    keys already written, so a rerun skips them, and `read()` returns each key once (the first row;
    a duplicated row is neither judged twice nor counted twice). Each `append` goes through the
    writer (no symlink followed, nothing outside `root`) and is fsync'd. Rows are data: they are
    written as given, never scrubbed.

    Reading never rewrites the file: a torn last line (a killed writer) is skipped when read and cut
    only before the next append; a valid last row without its newline is kept (and completed).

    Args:
        path: the JSONL file.
        key_fields: row fields that identify a unit of work.
        root: the run directory the file must stay in (default: its folder).
    """

    def __init__(self, path: str | os.PathLike, key_fields: tuple[str, ...] = (), *,
                 root: str | os.PathLike | None = None):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.root = Path(root) if root is not None else self.path.parent
        self._checked_tail = False

    def _repair(self) -> None:
        """Before the first append: cut a torn final line, or complete a valid one with its newline."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        safe_target(self.path, self.root)
        fd = _open_nofollow(self.path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return
            os.lseek(fd, max(0, size - (1 << 20)), os.SEEK_SET)
            tail = os.read(fd, 1 << 20)
            if tail.endswith(b"\n"):
                return
            start = tail.rfind(b"\n") + 1
            last = tail[start:]
            try:
                ok = isinstance(json.loads(last.decode("utf-8")), dict)
            except (UnicodeDecodeError, json.JSONDecodeError):
                ok = False
            if ok:
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, b"\n")
            else:
                os.ftruncate(fd, size - len(last))
            os.fsync(fd)
        finally:
            os.close(fd)

    def key(self, row: dict[str, Any]) -> tuple:
        """The identity of a row.

        Args:
            row: a row.

        Returns:
            The JSON-encoded values of `key_fields`.
        """
        return tuple(json.dumps(row.get(k), sort_keys=True, default=str) for k in self.key_fields)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Iterate over the rows written so far, in file order (duplicates included; see `read`).

        Yields:
            One dict per line.

        Raises:
            DataError: a line that is not UTF-8 or not a JSON object (file and line named); a torn
                last line (no newline, not valid JSON) is skipped.
        """
        if not self.path.exists():
            return
        src = str(self.path)
        if not self.path.resolve().is_relative_to(self.root.resolve()):
            raise _unsafe(self.path, f"resolves outside the run directory {self.root} (a symlink?); refusing to read it")
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                torn = not raw.endswith(b"\n")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    if torn:
                        return
                    raise DataError(src, n, "line", f"not UTF-8 text (byte {e.start})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    if torn:
                        return  # a killed writer's last line: not a row
                    raise DataError(src, n, "json", f"invalid JSON ({e.msg} at column {e.colno}); "
                                    "the file is corrupt (delete it or the line to redo that work)") from None
                if not isinstance(row, dict):
                    raise DataError(src, n, "json", f"expected a JSON object, got {type(row).__name__}")
                yield row

    def read(self) -> list[dict[str, Any]]:
        """All rows written so far, each key once (the first row with it) when `key_fields` are set.

        Returns:
            The rows, in file order.
        """
        if not self.key_fields:
            return list(self.rows())
        seen: set[tuple] = set()
        out = []
        for r in self.rows():
            k = self.key(r)
            if k not in seen:
                seen.add(k)
                out.append(r)
        return out

    def done_keys(self) -> set[tuple]:
        """Keys of the rows already written (a rerun skips them).

        Returns:
            The set of `key(row)`.
        """
        return {self.key(r) for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        """Append one row through the writer, fsync'd (written as given: rows are data, never scrubbed).

        Args:
            row: a JSON-serialisable dict.
        """
        if not self._checked_tail:
            self._repair()
            self._checked_tail = True
        append_text(self.path, json.dumps(row, ensure_ascii=False, default=str) + "\n", root=self.root)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows one by one.

        Args:
            rows: JSON-serialisable dicts.
        """
        for r in rows:
            self.append(r)
