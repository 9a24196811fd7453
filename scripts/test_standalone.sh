#!/usr/bin/env bash
# CI's proof that a clone of this repository alone installs and passes its tests (issue 20): `git clone`s the
# committed HEAD into a fresh temporary folder (so nothing is beside it: no ../shared), runs the README's two
# commands there (install.sh, then test.sh with a subset: every test file that reads tests/fixtures/, the
# source-selection and self-containment checks, and the README quickstart), and removes the folder.
#
# The clone gets ComfyUI 0.3.64 from COMFY_0364_TARBALL, set here to ../shared/vendor/comfyui-0.3.64.tar.gz
# (absolute) when that exists: CI reaches no GitHub. Without either it says so and skips (exit 0).
# To save minutes the clone's test ComfyUI reuses this checkout's torch venv (COMFY_TEST_REUSE_VENV, the
# documented developer shortcut of scripts/setup_test_comfyui.sh; it installs torch from PyPI otherwise);
# everything else (.venv, both ComfyUI trees, the 0.3.64 venv) is installed anew in the clone.
# Options: --keep (leave the clone for a look). Env: STANDALONE_DIR (default: mktemp -d).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
keep=0
[[ "${1:-}" == "--keep" ]] && keep=1
step() { echo "test_standalone: $*"; }

tarball="${COMFY_0364_TARBALL:-}"
if [[ -z "$tarball" && -f "$REPO/../shared/vendor/comfyui-0.3.64.tar.gz" ]]; then
    tarball="$(cd "$REPO/../shared/vendor" && pwd)/comfyui-0.3.64.tar.gz"
fi
if [[ -z "$tarball" ]]; then
    step "skipped: no COMFY_0364_TARBALL and no ../shared/vendor/comfyui-0.3.64.tar.gz (the clone could only download ComfyUI from GitHub)"
    exit 0
fi
tarball="$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")"

# a given STANDALONE_DIR must be empty (nothing beside the clone), checked before anything is removed on exit;
# only what this script made is removed: the mktemp folder, or the clone inside a given folder
if [[ -n "${STANDALONE_DIR:-}" ]]; then
    work="$STANDALONE_DIR"
    mkdir -p "$work"
    [[ -z "$(ls -A "$work")" ]] || { echo "test_standalone: FAIL: STANDALONE_DIR=$work is not empty" >&2; exit 1; }
    clone="$work/comfy-worker"
    ((keep)) || trap 'rm -rf "$clone"' EXIT
else
    work="$(mktemp -d)"
    clone="$work/comfy-worker"
    ((keep)) || trap 'rm -rf "$work"' EXIT
fi
t0=$(date +%s)
git clone -q "$REPO" "$clone"
step "clone of $(git -C "$clone" rev-parse --short HEAD) in $clone (nothing beside it); COMFY_0364_TARBALL=$tarball"

export COMFY_0364_TARBALL="$tarball"
unset COMFY_TEST_HOME
if [[ -x "$REPO/.test-env/venv/bin/python" && -z "${COMFY_TEST_REUSE_VENV:-}" ]]; then
    export COMFY_TEST_REUSE_VENV
    COMFY_TEST_REUSE_VENV="$(cd "$REPO/.test-env/venv" && pwd -P)"
fi
cd "$clone"
t1=$(date +%s)
bash scripts/install.sh
t2=$(date +%s)
step "install.sh: $((t2 - t1)) s"
bash scripts/test.sh \
    tests/unit/test_self_contained.py tests/integration/test_comfyui_source.py \
    tests/unit/test_workflow.py tests/unit/test_paths.py tests/unit/test_ui_convert.py tests/unit/builders \
    tests/unit/explore/test_space.py tests/unit/explore/test_analyze.py tests/unit/prompt_runner \
    tests/integration/explore/test_cli.py tests/integration/wan/test_i2v_chain_0364.py tests/e2e/test_quickstart.py
t3=$(date +%s)
step "test.sh (subset): $((t3 - t2)) s; all in $((t3 - t0)) s"
