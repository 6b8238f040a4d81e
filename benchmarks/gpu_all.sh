#!/usr/bin/env bash
# GPU benchmarks on the device machine (one H100), in one call of the session's `run` tool:
#   run(command="bash benchmarks/gpu_all.sh MODELS [ONLY]", carry=[".whl", ".devcache"], timeout_s=600)
# MODELS: comma-separated (qwen2.5-0.5b,qwen2.5-7b); ONLY: subset of cache,steer,sample,finetune,judge.
# .whl holds the wheels the device image lacks (nnsight, transformer-lens, trl, peft, ... see
# benchmarks/README in BENCHMARKS.md); .devcache/bench holds the Qwen3 tokenizer, a data sample
# and the EM judge prompts (benchmarks/prepare_device.sh makes both). Results land in $OUT.
set -u
MODELS=${1:-qwen2.5-0.5b,qwen2.5-7b}
ONLY=${2:-cache,steer,sample,finetune,judge}
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt"
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for n in ("transformers", "peft", "nnsight", "transformer-lens", "trl", "accelerate", "datasets", "pyarrow"):
    try: print(n, md.version(n))
    except Exception as e: print(n, "MISSING", e)
import nnsight, trl, transformer_lens.model_bridge, introspect_mech  # fail early
print("imports ok")
PY
set -o pipefail
timeout 150 python3 benchmarks/check_gpu_paths.py 2>&1 | grep -v -E "Loading weights|Writing model" | tee "$OUT/checks.txt"
python3 benchmarks/run_all.py --gpu --models "$MODELS" --only "$ONLY" --out "$OUT/results.jsonl" 2>&1 \
  | grep -v -E "Loading weights|Writing model|it/s\]$" | tee "$OUT/log_${MODELS//,/_}.txt"
