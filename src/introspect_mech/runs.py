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

`JsonlLog` makes a killed run resumable: rows carry a key, and `done_keys()` tells what to skip.
A torn last line (the process died mid-write) is dropped on reopen, never duplicated; a corrupt
line elsewhere is a one-line `DataError` naming the file and line.

Secrets never reach disk: fields named like credentials are redacted, and so is any value equal
to an environment variable that holds a key, URL userinfo (`https://user:pass@host`) and key-like
query parameters (`?api-key=...`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .data.records import DataError

PACKAGES = (
    "introspect_mech", "torch", "transformers", "peft", "transformer-lens", "sae-lens",
    "nnsight", "plotly", "scikit-learn", "safetensors", "gguf", "numpy", "openai",
)
REDACTED = "<redacted>"
# Field names that hold credentials. A bare `token` (or `top_token`, `next_token`, ...) is NOT one: result
# rows of an interpretability run name vocabulary tokens so; only known credential-token names are.
_SECRET_KEY = re.compile(r"(api[_-]?key|(^|_)(access|auth|api|bearer|hf|hub|refresh|session|github|gh|openai|"
                         r"secret|private)[_-]?token$|secret|password|passwd|authorization|credential)", re.IGNORECASE)
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/@\s?#]+)@")
_KEY_QUERY = re.compile(r"(?P<name>[?&;](?:api[_-]?key|key|token|access[_-]?token|secret|sig|signature|"
                        r"password|auth|code)=)(?P<value>[^&#\s]+)", re.IGNORECASE)
_KEY_LIKE = re.compile(r"^(sk-|sk_|pk-|hf_|ghp_|gho_|xox[abp]-|AKIA|AIza)[A-Za-z0-9_\-]{6,}")
_KEY_WORD = re.compile(r"(?<![A-Za-z0-9_\-])(sk-|sk_|hf_|ghp_|gho_|xox[abp]-|AKIA|AIza)[A-Za-z0-9_\-]{16,}")


class RunConfigError(DataError):
    """A rerun into a run directory that holds results of a different configuration."""


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
        `{"name": ..., **model_fingerprint(weights), "adapter_sha256": ...}` (the adapter by content,
        so the same adapter under another path binds the same).
    """
    from .models import model_fingerprint

    adapter = model.meta.get("adapter")  # by content: the same adapter under another path is the same
    return {"name": model.name, **model_fingerprint(model.model), "adapter_sha256": adapter_sha256(adapter)}


# ---- secrets ----------------------------------------------------------------------------------
def secret_values(extra_env: Iterable[str] = ()) -> set[str]:
    """Values of environment variables that hold credentials (names like *KEY*, *TOKEN*, *SECRET*).

    Args:
        extra_env: further variable names whose values are secrets (e.g. a judge's `api_key_env`).

    Returns:
        The set of secret strings (only values of 8 characters or more, so short flags are kept).
    """
    names = {k for k in os.environ if _SECRET_ENV.search(k)} | {e for e in extra_env if e}
    # paths (SSH_AUTH_SOCK, XAUTHORITY, ...) are not credentials
    return {v for k in names if len(v := os.environ.get(k, "")) >= 8 and not v.startswith(("/", "~", "."))}


def looks_like_secret(value: str) -> bool:
    """Whether a string looks like a credential itself (e.g. `sk-...`, `hf_...`).

    Args:
        value: the string (surrounding whitespace ignored).

    Returns:
        True when it starts with a known key prefix followed by at least 6 key characters.
    """
    return bool(_KEY_LIKE.match(value.strip()))


def scrub_text(s: str, secrets: Iterable[str] = ()) -> str:
    """Redact secret values, URL userinfo, key-like query parameters and key-shaped words (`sk-...`).

    Args:
        s: the text.
        secrets: literal secret values to replace (longest first), e.g. from `secret_values()`.

    Returns:
        `s` with each match replaced by `"<redacted>"`.
    """
    for v in sorted(set(secrets), key=len, reverse=True):
        if v and v in s:
            s = s.replace(v, REDACTED)
    s = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", s)
    s = _KEY_QUERY.sub(lambda m: f"{m['name']}{REDACTED}", s)
    s = _KEY_WORD.sub(REDACTED, s)
    return s


def _env_field_value(v: Any) -> Any:
    """Values of `*_env` fields must be variable NAMES; anything else (a pasted key) is redacted."""
    if not isinstance(v, str):
        return v
    if _ENV_NAME.match(v) and not looks_like_secret(v) and (v in os.environ or len(v) < 32):
        return v
    return REDACTED


def _scrub(obj: Any, secrets: set[str] | None = None, text: bool = True) -> Any:
    """Drop anything that looks like a credential before it reaches disk (by name and by value)."""
    if secrets is None:
        secrets = secret_values(_env_names(obj))
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            ks = str(k)
            if ks.endswith("_env"):
                out[k] = _env_field_value(v)
            elif _SECRET_KEY.search(ks):
                out[k] = REDACTED
            else:
                out[k] = _scrub(v, secrets, text)
        return out
    if isinstance(obj, (list, tuple)):
        return [_scrub(v, secrets, text) for v in obj]
    if isinstance(obj, str):
        if text:
            return scrub_text(obj, secrets)
        for v in secrets:
            if v in obj:
                obj = obj.replace(v, REDACTED)
        return obj
    return obj


def _env_names(obj: Any) -> list[str]:
    """Names given in `*_env` fields anywhere in obj (their values are secrets too)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).endswith("_env") and isinstance(v, str) and _ENV_NAME.match(v):
                out.append(v)
            else:
                out += _env_names(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += _env_names(v)
    return out


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
            DataError: manifest.json is not UTF-8, not valid JSON or not a JSON object.
        """
        if not self.manifest_path.exists():
            return {}
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(str(self.manifest_path), None, "manifest", f"not UTF-8 text (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(str(self.manifest_path), e.lineno, "manifest",
                            f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(m, dict):
            raise DataError(str(self.manifest_path), None, "manifest", "expected a JSON object")
        return m

    def _write(self, m: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.manifest_path)

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
        paths = [p for p in self.path.iterdir() if p.name not in keep] if outputs is None else \
            [self.path / n for n in outputs]
        for p in paths:
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
        with open(self.provenance_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_scrub(row), ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
        return JsonlLog(self.path / name, key_fields)


class JsonlLog:
    """Append-only JSONL results file with resume.

    `key_fields` name the row fields that identify a unit of work; `done_keys()` returns the set of
    keys already written, so a rerun skips them. Each `append` is flushed and fsync'd.

    Args:
        path: the JSONL file (its folder is created; a torn last line is truncated on open).
        key_fields: row fields that identify a unit of work.
    """

    def __init__(self, path: str | os.PathLike, key_fields: tuple[str, ...] = ()):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        """Truncate a torn final line left by a killed writer."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def key(self, row: dict[str, Any]) -> tuple:
        """The identity of a row.

        Args:
            row: a row.

        Returns:
            The JSON-encoded values of `key_fields`.
        """
        return tuple(json.dumps(row.get(k), sort_keys=True, default=str) for k in self.key_fields)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Iterate over the rows written so far, in file order.

        Yields:
            One dict per line.

        Raises:
            DataError: a line that is not UTF-8 or not a JSON object (file and line named).
        """
        if not self.path.exists():
            return
        src = str(self.path)
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(src, n, "line", f"not UTF-8 text (byte {e.start})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    raise DataError(src, n, "json", f"invalid JSON ({e.msg} at column {e.colno}); "
                                    "the file is corrupt (delete it or the line to redo that work)") from None
                if not isinstance(row, dict):
                    raise DataError(src, n, "json", f"expected a JSON object, got {type(row).__name__}")
                yield row

    def read(self) -> list[dict[str, Any]]:
        """All rows written so far.

        Returns:
            The rows, in file order.
        """
        return list(self.rows())

    def done_keys(self) -> set[tuple]:
        """Keys of the rows already written (a rerun skips them).

        Returns:
            The set of `key(row)`.
        """
        return {self.key(r) for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        """Append one row, flushed and fsync'd (credential-looking keys redacted).

        Args:
            row: a JSON-serialisable dict.
        """
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_scrub(row, text=False), ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows one by one.

        Args:
            rows: JSON-serialisable dicts.
        """
        for r in rows:
            self.append(r)
