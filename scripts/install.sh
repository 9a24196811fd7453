#!/usr/bin/env bash
# Install everything comfy-worker and its tests need, on a fresh Debian machine or a developer's box:
#   ffmpeg, sqlite3 and chromium (apt, when root and missing; chromium is the headless browser the contact-sheet
#   tests drive; as root also buildah and debootstrap for the image test), .venv with the package and its dev
#   extras, and the CPU test ComfyUIs under .test-env (scripts/setup_test_comfyui.sh, then ComfyUI 0.3.64 for the
#   Wan 2.2 graph tests: scripts/setup_test_comfyui_0364.sh; skip both with --no-comfyui).
# Idempotent: re-running only does what is missing.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
with_comfyui=1
[[ "${1:-}" == "--no-comfyui" ]] && with_comfyui=0

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v chromium >/dev/null || need+=(chromium)
if [[ $(id -u) -eq 0 ]]; then  # the image test (scripts/test_image.sh) builds docker/Dockerfile as root
    command -v buildah >/dev/null || need+=(buildah)
    command -v debootstrap >/dev/null || need+=(debootstrap)
fi
if ((${#need[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "install: apt-get install ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "install: please install ${need[*]} (e.g. sudo apt-get install -y ${need[*]})" >&2
        exit 1
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "install: creating .venv"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
echo "install: comfy-worker $(.venv/bin/python -c 'import comfy_worker; print(comfy_worker.__version__)') in .venv"

# Azurite (Azure Blob Storage's emulator, an npm package) for the az:// storage tests, in the ignored .azurite/
if command -v npm >/dev/null && [[ ! -x .azurite/node_modules/.bin/azurite-blob ]]; then
    echo "install: npm install azurite into .azurite/"
    npm install --prefix .azurite --no-audit --no-fund --silent azurite@3 >/dev/null || echo "install: azurite failed (the az:// tests will be skipped)" >&2
fi

if ((with_comfyui)); then
    bash scripts/setup_test_comfyui.sh
    bash scripts/setup_test_comfyui_0364.sh
fi
