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

Modules: `writer` (the one writer), `rundir` (`RunDir`: manifest, bindings, provenance, lock), `resume`
(`JsonlLog`), `hashes` (versions and content hashes), `diff` (how two configurations differ). Every name is
importable from `introspect_mech.runs`.
"""

from __future__ import annotations

from ..scrub import (  # noqa: F401  (re-exported: the scrubber's public names were runs.* before)
    REDACTED, env_names, looks_like_secret, register_secret_env, scrub_obj, scrub_text, secret_values,
)
from .diff import config_diff, describe_diff, flatten  # noqa: F401
from .hashes import PACKAGES, adapter_sha256, file_sha256, json_sha256, model_config, package_versions  # noqa: F401
from .resume import JsonlLog  # noqa: F401
from .rundir import RunConfigError, RunDir, RunLockedError  # noqa: F401
from .writer import (  # noqa: F401
    UnsafePathError, append_text, read_inside, safe_target, save_tensors, staged_dir, write_bytes, write_json,
    write_jsonl, write_text,
)
