#!/usr/bin/env bash
# Install ComfyUI 0.3.64 (the current server with the core Wan 2.2, video and audio nodes) for the tests that check
# that the Wan 2.2 builders' graphs pass a real /prompt. CPU only; no model weights (tests put empty placeholder
# files with the right names in its model folders: validation only lists names).
#
# Source (scripts/lib/comfyui_0364.sh): COMFY_0364_TARBALL, else ../shared/vendor/comfyui-0.3.64.tar.gz when it
# exists, else GitHub's archive of commit a125cd84b054 (downloaded once to <home>/downloads/, its files checked
# against the commit's git tree id). PyPI only for the small extras.
# Needs the older test server's venv first (scripts/setup_test_comfyui.sh): torch 2.14.1 & co. are reused from it
# through a .pth file instead of being installed a second time. Result, under ${COMFY_TEST_HOME:-<repo>/.test-env}:
#   comfyui-0.3.64/           the ComfyUI tree (main.py, nodes.py, comfy_extras/, ...)
#   venv-0.3.64/              a small venv layered on venv/: av, alembic, SQLAlchemy, pydantic-settings, ...
#   comfyui-0.3.64-stubs/     on that venv's path: a schema-only `torchaudio` (no wheel exists for torch 2.14.1;
#                             enough for /object_info and /prompt validation, not for running audio nodes) and a
#                             stand-in `comfyui_frontend_package` (the API needs no web UI)
# Idempotent: a marker records a finished install. Exits non-zero with one clear line on failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${COMFY_TEST_HOME:-$REPO/.test-env}"
RECIPE="v1 comfyui==0.3.64 av>=14.2 alembic SQLAlchemy pydantic-settings~=2.0 sentencepiece requests spandrel stubs:torchaudio,frontend"
MARKER="$HOME_DIR/.setup-0.3.64-complete"
BASE_VENV="$HOME_DIR/venv"
VENV="$HOME_DIR/venv-0.3.64"
TREE="$HOME_DIR/comfyui-0.3.64"
STUBS="$HOME_DIR/comfyui-0.3.64-stubs"

fail() { echo "setup_test_comfyui_0364: ERROR: $*" >&2; exit 1; }
step() { echo "setup_test_comfyui_0364: $*"; }

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$RECIPE" && -x "$VENV/bin/python" && -f "$TREE/main.py" ]]; then
    step "already installed in $HOME_DIR (delete $MARKER to reinstall)"
    exit 0
fi
start=$(date +%s)
[[ -x "$BASE_VENV/bin/python" ]] || fail "no $BASE_VENV: run scripts/setup_test_comfyui.sh first (it installs torch)"
# shellcheck source=lib/comfyui_0364.sh
source "$REPO/scripts/lib/comfyui_0364.sh"
TARBALL="$(comfyui_0364_tarball setup_test_comfyui_0364 "$REPO" "$HOME_DIR/downloads")" || exit 1

step "unpacking $TARBALL to $TREE"
rm -rf "$TREE.partial" "$TREE"
mkdir -p "$TREE.partial"
tar -xzf "$TARBALL" -C "$TREE.partial" --strip-components=1 || fail "could not unpack $TARBALL"
[[ -f "$TREE.partial/main.py" ]] || fail "$TARBALL has no main.py one folder down (not a ComfyUI source tarball?)"
mv "$TREE.partial" "$TREE"

step "writing stand-in modules to $STUBS"
rm -rf "$STUBS"
mkdir -p "$STUBS/torchaudio" "$STUBS/comfyui_frontend_package/static"
cat >"$STUBS/torchaudio/__init__.py" <<'EOF'
"""Schema-only stand-in for torchaudio (written by scripts/setup_test_comfyui_0364.sh).

No torchaudio wheel matches the test venv's torch 2.14.1. ComfyUI 0.3.64 registers its audio nodes only when
`import torchaudio` works; /object_info and /prompt validation need nothing more. Running an audio node fails
loudly here instead of computing something wrong."""

__version__ = "0.0.0+cw-stub"


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("torchaudio stand-in: the CPU test ComfyUI validates audio graphs but cannot run them")


class _Namespace:
    def __getattr__(self, name):
        return _unavailable


functional = _Namespace()
transforms = _Namespace()
load = save = info = _unavailable
EOF
cat >"$STUBS/comfyui_frontend_package/__init__.py" <<'EOF'
"""Stand-in for the ComfyUI web frontend (written by scripts/setup_test_comfyui_0364.sh): the tests use the API."""
EOF
echo '<!doctype html><title>ComfyUI (API only)</title>' >"$STUBS/comfyui_frontend_package/static/index.html"

if [[ ! -x "$VENV/bin/python" ]]; then
    step "creating $VENV (layered on $BASE_VENV)"
    "$BASE_VENV/bin/python" -m venv "$VENV" || fail "could not create $VENV"
fi
own="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
base="$("$BASE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n%s\n' "$STUBS" "$base" >"$own/_comfy_worker_test_layers.pth"

step "installing ComfyUI 0.3.64's extra dependencies into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "av>=14.2.0" alembic SQLAlchemy "pydantic-settings~=2.0" sentencepiece requests spandrel \
    || fail "pip could not install av, alembic, SQLAlchemy, pydantic-settings, sentencepiece, requests, spandrel"

step "checking that ComfyUI 0.3.64's imports work"
(cd "$TREE" && "$VENV/bin/python" -c "import torch, torchaudio, av, sqlalchemy, alembic, comfy.utils, comfy_api.input") \
    || fail "ComfyUI 0.3.64's imports fail in $VENV (see the traceback above)"

echo "$RECIPE" >"$MARKER"
step "done in $(( $(date +%s) - start )) s: $TREE with $VENV/bin/python"
