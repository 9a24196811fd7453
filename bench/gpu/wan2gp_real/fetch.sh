#!/usr/bin/env bash
# Run here (PyPI reachable; no GPU): everything the GPU machine needs for a real Wan2GP run that it lacks, in
# batches that each fit one device call (64 MiB carried at most; batches are kept at 60 MB):
#   bash bench/gpu/wan2gp_real/fetch.sh [SNAPSHOT_GIT_DIR]
# -> .gpu-wheels-wan2gp/batch-1, batch-2, … (git-ignored), each holding
#    wan2gp-<ref>.tar.xz  deepbeepmeep/Wan2GP at docker/Dockerfile's WAN2GP_REF, from SNAPSHOT_GIT_DIR (default: the
#                         session snapshot /work/.mirror/deepbeepmeep+Wan2GP/repo); blobs absent from a partial
#                         snapshot are listed in wan2gp-missing.txt (TTS / voice-conversion assets, not on the t2v path)
#    overlay/*.whl        Wan2GP's pins that differ from the machine's packages, for Wan2GP's python only:
#                         transformers 4.54.0 (the machine has 5.x), tokenizers 0.21, huggingface_hub < 1.0
#    site/*.whl           packages the machine lacks, imported when wgp.py is (import_closure.py finds them)
# The ComfyUI side of the run is bench/gpu/fetch_wheels.sh (.gpu-wheels, ~45 MB; ffmpeg in .gpu-wheels-ffmpeg, 22 MB): a call each.
# gradio (54 MB; web UI only) is not fetched: standins/gradio replaces it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
REF=$(sed -n 's/^ARG WAN2GP_REF=//p' docker/Dockerfile)
SNAP="${1:-${WAN2GP_SNAPSHOT:-/work/.mirror/deepbeepmeep+Wan2GP/repo}}"
DEST=.gpu-wheels-wan2gp
LIMIT=$((60 * 1000 * 1000))
[[ "$REF" =~ ^[0-9a-f]{40}$ ]] || { echo "fetch: no WAN2GP_REF in docker/Dockerfile" >&2; exit 2; }
git --git-dir "$SNAP" cat-file -e "$REF^{commit}" 2>/dev/null \
    || { echo "fetch: $SNAP has no commit $REF (a git dir of deepbeepmeep/Wan2GP)" >&2; exit 2; }
rm -rf "$DEST" && mkdir -p "$DEST/stage/overlay" "$DEST/stage/site"
stage="$DEST/stage"

# 1. the snapshot at REF (file by file: a partial snapshot may lack some large blobs)
tree=$(mktemp -d)
: >"$stage/wan2gp-missing.txt"
while IFS=$'\t' read -r meta path; do
    sha=${meta##* }
    mkdir -p "$tree/Wan2GP/$(dirname "$path")"
    git --git-dir "$SNAP" cat-file blob "$sha" >"$tree/Wan2GP/$path" 2>/dev/null || { rm -f "$tree/Wan2GP/$path"; echo "$path" >>"$stage/wan2gp-missing.txt"; }
done < <(git --git-dir "$SNAP" ls-tree -r "$REF")
echo "$REF" >"$tree/Wan2GP/.wan2gp-ref"
tar -C "$tree" -cf - Wan2GP | xz -T2 -6 >"$stage/wan2gp-${REF:0:12}.tar.xz"
rm -rf "$tree"

# 2. wheels for the machine's Python 3.12 (pure-python sdists are built into wheels here)
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64)
pip download -q --no-deps "${PLAT[@]}" -d "$stage/overlay" \
    transformers==4.54.0 "tokenizers>=0.21,<0.22" "huggingface_hub>=0.34,<1.0"
pip download -q --no-deps "${PLAT[@]}" -d "$stage/site" \
    mmgp==3.7.12 optimum-quanto==0.2.7 diffusers==0.36.0 easydict gitpython==3.1.45 gitdb==4.0.12 smmap \
    ffmpeg-python future soundfile cffi pycparser ftfy wcwidth rembg==2.0.65 pymatting pooch platformdirs \
    jsonschema jsonschema-specifications referencing rpds-py loguru librosa==0.11.0 soxr audioread decorator \
    omegaconf pydub more-itertools mutagen
# sdists only (pure python), and imageio-ffmpeg without its bundled 68 MB ffmpeg (IMAGEIO_FFMPEG_EXE points at
# the static ffmpeg bench/gpu/fetch_wheels.sh carries)
pip wheel -q --no-deps -w "$stage/site" antlr4-python3-runtime==4.9.3 openai-whisper==20250625 smplfitter==0.2.10
pip wheel -q --no-deps --no-binary imageio-ffmpeg -w "$stage/site" imageio-ffmpeg

# 3. batches of at most 60 MB (largest first), keeping each file's folder (overlay/ or site/)
n=0 used=$LIMIT
while read -r size rel; do
    if ((used + size > LIMIT)); then n=$((n + 1)); used=0; fi
    mkdir -p "$DEST/batch-$n/$(dirname "$rel")"
    mv "$stage/$rel" "$DEST/batch-$n/$rel"
    used=$((used + size))
done < <(cd "$stage" && find . -type f -printf '%s %P\n' | sort -rn)
rm -rf "$stage"
for b in "$DEST"/batch-*; do echo "fetch: $b: $(du -sb "$b" | cut -f1) bytes, $(find "$b" -type f | wc -l) files"; done
