#!/usr/bin/env bash
# GPU benchmarks on the device machine (one H100), one call of the session's `run` tool per shape:
#   run(command="bash benchmarks/gpu_all.sh qwen2.5-0.5b cache,judge,steer,finetune", carry=[".whl", ".devcache/bench"], timeout_s=600)
#   run(command="bash benchmarks/gpu_all.sh qwen2.5-0.5b sample", carry=[".whl", ".devcache/bench"], timeout_s=600)
#   run(command="bash benchmarks/gpu_all.sh qwen2.5-7b", carry=[".whl", ".devcache/bench"], timeout_s=600)
# (estimated ~350 s, ~450 s and ~350 s; the sample call also runs check_gpu_paths.py first)
# Args: MODELS (comma-separated) and optionally ONLY (subset of cache,judge,steer,sample,finetune).
# .whl holds the wheels the device image lacks and .devcache/bench the Qwen3 tokenizer, a data sample
# and the EM judge prompts: `bash benchmarks/prepare_device.sh` makes both. Results land in $OUT.
set -u
MODELS=${1:-qwen2.5-0.5b}
ONLY=${2:-cache,judge,steer,sample,finetune}
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
if [[ ",$ONLY," == *",sample,"* ]]; then  # the checks concern the sampling fast path
  timeout 150 python3 benchmarks/check_gpu_paths.py 2>&1 | grep -v -E "Loading weights|Writing model" | tee "$OUT/checks.txt"
fi
python3 benchmarks/run_all.py --gpu --models "$MODELS" --only "$ONLY" --out "$OUT/results.jsonl" 2>&1 \
  | grep -v -E "Loading weights|Writing model|it/s\]$" | tee "$OUT/log_${MODELS//,/_}.txt"
