#!/usr/bin/env bash
# The real Wan2GP run of issue 23, on the GPU machine, from the repo root (after the calls that carried the
# batches, the machine still warm):
#   bash bench/gpu/wan2gp_real/run.sh [--skip-switch]
# 1. bench/gpu/setup_env.sh (ComfyUI 0.3.64, ffmpeg; needs .gpu-wheels carried earlier or now) and setup.sh;
# 2. checks.py: t2v completes (frames/fps/size), progress, warm load, cancel, out-of-range refusals, NVML;
# 3. the engine switch both ways with NVML: bench/gpu/bench_engines_gpu.py --wan2gp real (ComfyUI's 5B ti2v
#    random models from bench/gpu/make_models.py, written on first use).
# Output under $OUT: wan2gp_checks.json, engines.json, engines_vram.svg, the daemons' logs, nvidia-smi.txt.
set -euo pipefail
# shellcheck source=/dev/null
source bench/gpu/setup_env.sh
# shellcheck source=/dev/null
source bench/gpu/wan2gp_real/setup.sh
export OUT="${OUT:-$GPU_WORK/out}"
mkdir -p "$OUT"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
code=0
python3 bench/gpu/wan2gp_real/checks.py 2>&1 | tee "$OUT/wan2gp_checks.txt" | grep -E "^(bench|check|checks):|Traceback|Error" || code=1
if [[ "${1:-}" != "--skip-switch" ]]; then
    python3 bench/gpu/bench_engines_gpu.py --wan2gp real --wan2gp-path "$WAN2GP_PATH" --wan2gp-python "$WAN2GP_PYTHON" \
        --wan2gp-model t2v_1.3B --rounds 2 2>&1 | tee "$OUT/bench_engines_real.txt" | grep -E "^bench:|Error|Traceback" || code=1
fi
exit $code
