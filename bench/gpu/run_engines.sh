#!/usr/bin/env bash
# ComfyUI <-> Wan2GP through the daemon on the GPU machine (one device call, from the repo root):
#   bash bench/gpu/run_engines.sh [--rounds 3] [--wan2gp holder|real ...]
# Needs the ComfyUI GPU bench's setup (bench/gpu/setup_env.sh, make_models.py; carry .gpu-wheels, filled here by
# bench/gpu/fetch_wheels.sh). Output: $OUT/engines.json, $OUT/engines_vram.svg, $OUT/daemon_engines.log.
# Without a GPU: python bench/gpu/bench_engines_gpu.py --dry-run --holder-python <a python with torch>
set -euo pipefail
if [[ ! -f bench/gpu/setup_env.sh ]]; then
    echo "run_engines: bench/gpu/setup_env.sh is missing (the ComfyUI GPU bench sets up ComfyUI 0.3.64 and the wheels)" >&2
    exit 2
fi
# shellcheck source=/dev/null
source bench/gpu/setup_env.sh
export OUT="${OUT:-$GPU_WORK/out}"
mkdir -p "$OUT"
python3 bench/gpu/bench_engines_gpu.py "$@" 2>&1 | tee "$OUT/bench_engines.txt" | grep -E "^bench:|Error|error|Traceback"
