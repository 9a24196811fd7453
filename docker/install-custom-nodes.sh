#!/usr/bin/env bash
# Install the custom node packs listed in custom_nodes.txt into $COMFY_PATH/custom_nodes, each at its pinned
# commit, with its Python requirements in ComfyUI's venv. Used by docker/Dockerfile; runnable on any host.
#   install-custom-nodes.sh LIST COMFY_PATH PYTHON
# The torch stack is never touched: torch / torchvision / torchaudio lines are dropped from the packs'
# requirements and the installed versions are passed as constraints, so no pack can swap the CUDA build.
# No pack's install.py is run (they fetch extras such as cupy at will); requirements.txt, else
# requirements-no-cupy.txt, is all that is installed.
set -euo pipefail
list="$1" comfy="$2" python="$3"
fail() { echo "install-custom-nodes: ERROR: $*" >&2; exit 1; }
[[ -f "$list" ]] || fail "no list at $list"
[[ -d "$comfy/custom_nodes" ]] || fail "$comfy/custom_nodes does not exist (is COMFY_PATH a ComfyUI checkout?)"

constraints="$(mktemp)"
"$python" -m pip freeze | grep -iE '^(torch|torchvision|torchaudio)==' >"$constraints" || true
reqs="$(mktemp)"
while read -r dir url ref _; do
    [[ -z "$dir" || "$dir" == \#* ]] && continue
    dest="$comfy/custom_nodes/$dir"
    echo "install-custom-nodes: $dir @ ${ref:0:12}"
    rm -rf "$dest"
    git init -q "$dest"
    git -C "$dest" remote add origin "$url"
    git -C "$dest" fetch -q --depth 1 origin "$ref" || fail "cannot fetch $ref from $url"
    git -C "$dest" checkout -q FETCH_HEAD
    [[ "$(git -C "$dest" rev-parse HEAD)" == "$ref" ]] || fail "$dir: checked out $(git -C "$dest" rev-parse HEAD), not $ref"
    rm -rf "$dest/.git"
    for f in requirements.txt requirements-no-cupy.txt; do
        if [[ -f "$dest/$f" ]]; then
            grep -viE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;[].*)?$' "$dest/$f" >>"$reqs" || true
            break
        fi
    done
done <"$list"
if [[ -s "$reqs" ]]; then
    "$python" -m pip install --no-cache-dir -r "$reqs" -c "$constraints"
fi
rm -f "$constraints" "$reqs"
