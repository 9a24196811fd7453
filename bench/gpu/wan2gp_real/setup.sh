#!/usr/bin/env bash
# On the GPU machine (no network), from the repo root, once per batch carried (device calls back to back, the
# machine kept warm; what is installed under $GPU_WORK stays between calls):
#   source bench/gpu/wan2gp_real/setup.sh        (carry .gpu-wheels-wan2gp/batch-N; run after bench/gpu/setup_env.sh)
# Each call copies the carried batch(es) into $GPU_WORK/wan2gp/incoming; once every part is there (the snapshot
# tarball, the overlay and site wheels), it unpacks Wan2GP, installs the wheels with --target (nothing in the
# machine's own site-packages changes), writes the wrapper python ($WAN2GP_PYTHON: python3 with the overlay,
# the site dir and the gradio stand-in first on PYTHONPATH, IMAGEIO_FFMPEG_EXE at the static ffmpeg), writes
# the random-weight models (write_models.py) and wgp_config.json (text_encoder_quantization bf16), and runs the
# import preflight (import_closure.py). Exports WAN2GP_PATH, WAN2GP_PYTHON.
set -euo pipefail
HERE_WGP="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GPU_WORK="${GPU_WORK:-/root/cwgpu}"
WGP="$GPU_WORK/wan2gp"
mkdir -p "$WGP/incoming"
for b in .gpu-wheels-wan2gp/batch-*; do
    [[ -d "$b" ]] && cp -r "$b"/. "$WGP/incoming/"
done
tarball=$(find "$WGP/incoming" -maxdepth 1 -name 'wan2gp-*.tar.xz' | head -1)
if [[ -z "$tarball" || ! -d "$WGP/incoming/site" || ! -d "$WGP/incoming/overlay" ]]; then
    echo "wan2gp setup: parts so far: $(find "$WGP/incoming" -mindepth 1 -maxdepth 1 -printf '%f ') — carry the next batch and source this again"
    return 0
fi
t0=$(date +%s)
export WAN2GP_PATH="$WGP/Wan2GP"
if [[ ! -f "$WAN2GP_PATH/wgp.py" ]]; then
    tar -xJf "$tarball" -C "$WGP"
fi
if [[ ! -f "$WGP/.installed" ]]; then
    python3 -m pip install -q --no-index --no-deps --target "$WGP/site" "$WGP"/incoming/site/*.whl
    python3 -m pip install -q --no-index --no-deps --target "$WGP/overlay" "$WGP"/incoming/overlay/*.whl
    touch "$WGP/.installed"
fi
ffmpeg_bin="$(command -v ffmpeg || true)"
[[ -n "$ffmpeg_bin" ]] || { echo "wan2gp setup: no ffmpeg on PATH: source bench/gpu/setup_env.sh first" >&2; return 2; }
# ffmpeg stays on PATH only: Wan2GP's download_ffmpeg() (shared/ffmpeg_setup.py) takes an ffmpeg found in its
# ffmpeg_bins/ for a downloaded build and, finding no libavdevice.so beside it, tries GitHub (the first GPU run
# linked it there and logged "Failed to download FFmpeg binaries automatically"); one on PATH is trusted as is
rm -f "$WAN2GP_PATH/ffmpeg_bins/ffmpeg" "$WAN2GP_PATH/ffmpeg_bins/ffprobe"
export WAN2GP_PYTHON="$WGP/python"
cat >"$WAN2GP_PYTHON" <<WRAP
#!/usr/bin/env bash
# Wan2GP's python on this machine: its pins (overlay) and missing packages (site) first, gradio stood in
export PYTHONPATH="$WGP/overlay:$WGP/site:$HERE_WGP/standins\${PYTHONPATH:+:\$PYTHONPATH}"
export IMAGEIO_FFMPEG_EXE="$ffmpeg_bin"
exec python3 "\$@"
WRAP
chmod +x "$WAN2GP_PYTHON"
if [[ ! -f "$WGP/.preflight-ok" ]]; then
    if ! "$WAN2GP_PYTHON" "$HERE_WGP/import_closure.py" --wan2gp "$WAN2GP_PATH" --json "$WGP/import_closure.json"; then
        echo "wan2gp setup: wgp.py does not import with what was carried (above; $WGP/import_closure.json)" >&2
        return 1
    fi
    touch "$WGP/.preflight-ok"
fi
# Wan2GP wrote its default wgp_config.json on that first import; the bf16 text encoder is the file we write
"$WAN2GP_PYTHON" - "$WAN2GP_PATH/wgp_config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config.update({"text_encoder_quantization": "bf16", "checkpoints_paths": ["ckpts", "."]})
json.dump(config, open(path, "w"))
PY
if [[ ! -f "$WAN2GP_PATH/ckpts/wan2.1_text2video_1.3B_mbf16.safetensors" ]]; then
    "$WAN2GP_PYTHON" "$HERE_WGP/write_models.py" --wan2gp "$WAN2GP_PATH" --ckpts "$WAN2GP_PATH/ckpts"
fi
echo "wan2gp setup: ready in $(( $(date +%s) - t0 )) s: WAN2GP_PATH=$WAN2GP_PATH WAN2GP_PYTHON=$WAN2GP_PYTHON ($(cat "$WAN2GP_PATH/.wan2gp-ref"))"
