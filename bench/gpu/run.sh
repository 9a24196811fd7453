#!/usr/bin/env bash
# One device call per phase, from the repo root on the GPU machine:
#   bash bench/gpu/run.sh ti2v        # cold start + 5B at 1280x704x121
#   bash bench/gpu/run.sh i2v         # 14B HIGH/LOW with and without the 4-step LoRA, 3-chunk chain
#   bash bench/gpu/run.sh efficiency  # 6 i2v jobs straight into ComfyUI vs through the daemon
#   bash bench/gpu/run.sh coverage    # every Wan 2.2 task type run by the real nodes (models 2 blocks deep)
#   bash bench/gpu/run.sh warm        # issue 24: 5B cold overhead without / with WARM_PREFETCH + WARM_UP
#   bash bench/gpu/run.sh warm14      # issue 24: the same for the 14B HIGH/LOW i2v pair
#   bash bench/gpu/run.sh warmstart   # issue 24: a waiting 5B task: prefetch at launch vs after ComfyUI's torch import
#   bash bench/gpu/run.sh gcfreeze    # issue 24: COMFY_GC_FREEZE off then on, 5B speed fast (gcfreeze14: the 14B)
#   bash bench/gpu/run.sh speed       # issue 24: compile: true vs default, s/step and one-step fidelity
#   python3 bench/gpu/bench_encode.py # issue 24: SaveVideo's encode on testsrc2 at each type's default size
# (before the first call, here: bash bench/gpu/fetch_wheels.sh; carry .gpu-wheels). Output: $OUT/bench_<phase>.txt,
# results_<phase>.json and the daemon's log.
set -euo pipefail
source bench/gpu/setup_env.sh
export OUT="${OUT:-$GPU_WORK/out}"
mkdir -p "$OUT"
python3 bench/gpu/bench_wan_gpu.py "${1:-ti2v}" 2>&1 | tee "$OUT/bench_${1:-ti2v}.txt" | grep -E "^bench:|Error|error|Traceback" 
