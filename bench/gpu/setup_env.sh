#!/usr/bin/env bash
# Prepare the GPU machine for the Wan 2.2 benchmark (no network there): install the carried wheels, this
# repo on PYTHONPATH (the machine has httpx, aiohttp, pyyaml...), unpack ComfyUI 0.3.64 and give it a stand-in
# frontend package (the API does not need the web UI).
#   here:   bash bench/gpu/fetch_wheels.sh          (fills .gpu-wheels/, git-ignored, carried by the device call)
#   there:  source bench/gpu/setup_env.sh           (sets COMFY_DIR, MODELS_DIR)
set -euo pipefail
WHEELS="${WHEELS:-.gpu-wheels}"
export GPU_WORK="${GPU_WORK:-/root/cwgpu}"
export COMFY_DIR="$GPU_WORK/comfyui"
export MODELS_DIR="$COMFY_DIR/models"
mkdir -p "$GPU_WORK"
t0=$(date +%s)
python3 -m pip install -q --no-index --find-links "$WHEELS" torchsde trampoline av structlog websockets tenacity \
    asyncio-throttle python-dotenv obstore 2>&1 | grep -v "^WARNING" || true
if [[ ! -f "$COMFY_DIR/main.py" ]]; then
    rm -rf "$GPU_WORK/unpack" && mkdir -p "$GPU_WORK/unpack"
    tar -xzf "$WHEELS/comfyui-0.3.64.tar.gz" -C "$GPU_WORK/unpack"
    mv "$GPU_WORK/unpack/"* "$COMFY_DIR"
fi
for ff in "$WHEELS/ffmpeg-ffprobe.tar.xz" .gpu-wheels-ffmpeg/ffmpeg-ffprobe.tar.xz; do
    if [[ ! -x "$GPU_WORK/bin/ffprobe" && -f "$ff" ]]; then
        # the worker needs ffmpeg/ffprobe (s2v audio, chains: frame counts, reference frames, joins); a pod image has them
        mkdir -p "$GPU_WORK/bin" && tar -xJf "$ff" -C "$GPU_WORK/bin"
    fi
done
export PATH="$GPU_WORK/bin:$PATH"
stub="$GPU_WORK/stubs/comfyui_frontend_package"
mkdir -p "$stub/static"
echo '"""Stand-in for the comfyui-frontend-package wheel: the benchmark uses the API only."""' >"$stub/__init__.py"
echo '<!doctype html><title>ComfyUI API only</title>' >"$stub/static/index.html"
export PYTHONPATH="$PWD:$GPU_WORK/stubs${PYTHONPATH:+:$PYTHONPATH}"  # this repo: the worker runs from source
echo "setup_env: ready in $(( $(date +%s) - t0 )) s: COMFY_DIR=$COMFY_DIR; $(python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
