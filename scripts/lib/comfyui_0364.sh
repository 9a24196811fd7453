# Where the ComfyUI 0.3.64 source comes from; sourced by scripts/setup_test_comfyui_0364.sh and
# scripts/test_image.sh. `comfyui_0364_tarball WHO REPO CACHE` prints the path of a source .tar.gz (one top-level
# folder holding main.py), taken from, in order:
#   1. COMFY_0364_TARBALL: a file you provide, used as given;
#   2. REPO/../shared/vendor/comfyui-0.3.64.tar.gz: the team's vendored copy (its checkouts and CI), used as given;
#   3. GitHub's archive of the pinned commit, downloaded once to CACHE and kept only if its files are exactly the
#      commit's: their git tree id must equal COMFYUI_0364_TREE.
# With none of the three it prints one line naming them (prefixed "WHO: ERROR:") and returns 1.
#
# Why a tree id and not the archive's sha256: GitHub makes the .tar.gz on request and does not promise the same
# bytes (gzip) twice, while the tree id depends on nothing but the files, their names and exec bits. It is the
# tree of commit COMFYUI_0364_COMMIT as GitHub holds it (`git rev-parse a125cd84b054^{tree}`), checked by
# scripts/lib/git_tree_id.py, which reproduces `git write-tree` on the unpacked folder.
# (The vendored copy differs on purpose: no exec bits, and tokenizer.json, input/example.png and the output/
# placeholder left out; its own sha256 is b5c5212d1b0e232185a51dbd74acd81485fcbda05bbd3162ecd47b977baff2d3.)

COMFYUI_0364_COMMIT=a125cd84b054a57729b5eecab930ca9408719832
COMFYUI_0364_TREE=bc8ceee3be4464fef05ec4009cf28ecc8839a8ea
COMFYUI_0364_URL="https://github.com/Comfy-Org/ComfyUI/archive/$COMFYUI_0364_COMMIT.tar.gz"
COMFYUI_0364_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

comfyui_0364_tarball() {
    local who="$1" repo="$2" cache="$3" py="${PYTHON:-python3}"
    local shared="$repo/../shared/vendor/comfyui-0.3.64.tar.gz"
    local file="$cache/ComfyUI-$COMFYUI_0364_COMMIT.tar.gz"
    local provide="provide one of: COMFY_0364_TARBALL=<a ComfyUI 0.3.64 source .tar.gz>, ../shared/vendor/comfyui-0.3.64.tar.gz beside the repository, or network access to $COMFYUI_0364_URL"
    if [[ -n "${COMFY_0364_TARBALL:-}" ]]; then
        if [[ ! -f "$COMFY_0364_TARBALL" ]]; then
            echo "$who: ERROR: COMFY_0364_TARBALL=$COMFY_0364_TARBALL is not a file; $provide" >&2
            return 1
        fi
        echo "$(cd "$(dirname "$COMFY_0364_TARBALL")" && pwd)/$(basename "$COMFY_0364_TARBALL")"
        return 0
    fi
    if [[ -f "$shared" ]]; then
        echo "$(cd "$(dirname "$shared")" && pwd)/$(basename "$shared")"
        return 0
    fi
    if [[ -f "$file" ]]; then  # checked when it was downloaded
        echo "$file"
        return 0
    fi
    echo "$who: no COMFY_0364_TARBALL nor ../shared/vendor: downloading $COMFYUI_0364_URL" >&2
    mkdir -p "$cache" || { echo "$who: ERROR: cannot create $cache; $provide" >&2; return 1; }
    local why
    if ! why=$("$py" - "$COMFYUI_0364_URL" "$file.partial" 2>&1 <<'PY'
import shutil, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
        shutil.copyfileobj(r, f)
except Exception as e:  # one line for the caller: the reason, not a traceback
    sys.exit(f"{type(e).__name__}: {e}")
PY
    ); then
        rm -f "$file.partial"
        echo "$who: ERROR: ComfyUI 0.3.64 source: the download failed (${why//$'\n'/ }); $provide" >&2
        return 1
    fi
    local tmp tree=""
    tmp="$(mktemp -d)"
    if tar -xzf "$file.partial" -C "$tmp" 2>/dev/null && [[ $(find "$tmp" -mindepth 1 -maxdepth 1 | wc -l) -eq 1 ]]; then
        tree="$("$py" "$COMFYUI_0364_LIB/git_tree_id.py" "$(find "$tmp" -mindepth 1 -maxdepth 1)")"
    fi
    rm -rf "$tmp"
    if [[ "$tree" != "$COMFYUI_0364_TREE" ]]; then
        rm -f "$file.partial"
        echo "$who: ERROR: the archive from $COMFYUI_0364_URL does not hold commit $COMFYUI_0364_COMMIT's files (tree '${tree:-unreadable}', expected $COMFYUI_0364_TREE); $provide" >&2
        return 1
    fi
    mv "$file.partial" "$file"
    echo "$who: downloaded and checked $file (tree $COMFYUI_0364_TREE)" >&2
    echo "$file"
}
