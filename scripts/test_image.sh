#!/usr/bin/env bash
# Build docker/Dockerfile without a registry, GPU or GitHub, and run the image:
#   1. a Debian bookworm base from debootstrap (cached under $IMAGE_TEST_DIR), imported with buildah;
#   2. the image, built with buildah (chroot isolation) from that base with CUDA=0 CUSTOM_NODES=0, CPU torch
#      (TORCH_SPEC), ComfyUI 0.3.64 from a source tarball (scripts/lib/comfyui_0364.sh: COMFY_0364_TARBALL,
#      else ../shared/vendor/comfyui-0.3.64.tar.gz, else GitHub's archive of the pinned commit, checked) and
#      WAN2GP=1 with the Wan2GP stand-in (tests/standins/wan2gp, no requirements) as
#      docker/vendor/wan2gp.tar.gz: the stage's layout and wiring are real, Wan2GP and its multi-GB requirements
#      are not;
#   3. checks on the image, each through its real ENTRYPOINT: refusals for a bad environment (exit 2, one line
#      per variable), `comfy-worker --version`, `comfy-worker migrate` + a `comfy` task on the embedded SQLite
#      queue run by the worker against the image's own CPU ComfyUI, a `t2v` task run by the same worker through
#      the image's Wan2GP stage (its venv, WAN2GP_PATH set by the entrypoint, ckpts/ and loras/ on the
#      volume), ComfyUI's modules compiled at build (a valid .pyc for each), and SIGTERM → exit 0 after draining.
# Needs root, buildah and debootstrap (scripts/install.sh installs them when root). Prints the time of every
# phase; docs/benchmarks.md has the figures. Options: --keep (keep the image and storage for another run),
# --only-checks (reuse the image built by a previous --keep run).
# Env: IMAGE_TEST_DIR (default <repo>/.image-test), IMAGE_TEST_STORAGE_DRIVER (overlay, else vfs),
#      TORCH_SPEC (default torch==2.14.1 torchvision==0.29.1), DEBIAN_MIRROR, COMFY_0364_TARBALL, COMFY_TEST_HOME
#      (its downloads/ keeps a downloaded ComfyUI archive, shared with scripts/setup_test_comfyui_0364.sh).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${IMAGE_TEST_DIR:-$REPO/.image-test}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE=localhost/comfy-worker-test-base
IMAGE=localhost/comfy-worker:image-test
keep=0 only_checks=0
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        --only-checks) only_checks=1 keep=1 ;;
        *) echo "test_image: unknown option $arg" >&2; exit 2 ;;
    esac
done

fail() { echo "test_image: FAIL: $*" >&2; exit 1; }
step() { echo "test_image: $*"; }
t0=$(date +%s)
declare -A took
timed() { # timed NAME command...
    local name="$1" start; shift; start=$(date +%s)
    "$@"
    took[$name]=$(( $(date +%s) - start ))
    step "$name: ${took[$name]} s"
}

[[ $(id -u) -eq 0 ]] || fail "needs root (buildah chroot builds and debootstrap); run it as root or in CI"
for c in buildah debootstrap; do
    command -v "$c" >/dev/null || fail "$c is not installed: apt-get install -y buildah debootstrap (scripts/install.sh does)"
done
# shellcheck source-path=SCRIPTDIR source=lib/comfyui_0364.sh
source "$REPO/scripts/lib/comfyui_0364.sh"
VENDOR="$(comfyui_0364_tarball test_image "$REPO" "${COMFY_TEST_HOME:-$REPO/.test-env}/downloads")" || exit 1
mkdir -p "$WORK"

driver="${IMAGE_TEST_STORAGE_DRIVER:-}"
if [[ -z "$driver" ]]; then
    driver=vfs
    probe="$WORK/overlay-probe"
    mkdir -p "$probe"/{l,u,w,m}
    if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
        umount "$probe/m"; driver=overlay
    fi
    rm -rf "$probe"
fi
B=(buildah --root "$WORK/storage-$driver" --runroot "$WORK/run-$driver" --storage-driver "$driver")
step "storage driver: $driver (vfs copies every layer in full; overlay does not)"

ctr=""
ctx=""
cleanup() {
    [[ -n "$ctr" ]] && "${B[@]}" rm "$ctr" >/dev/null 2>&1
    [[ -n "$ctx" ]] && rm -rf "$ctx"
    if ((keep == 0)); then
        "${B[@]}" rmi -a -f >/dev/null 2>&1
        rm -rf "$WORK/storage-$driver" "$WORK/run-$driver" 2>/dev/null
    fi
    return 0
}
trap cleanup EXIT

# --- the pip configuration of this machine, carried into the build -----------------------------------------
# (local wheel indexes, find-links, a TLS-intercepting proxy's CA): mounted read-only during RUN steps and set
# as PIP_* variables of the test base image only.
pip_env=() mounts=()
while IFS='=' read -r key value; do
    value="${value%\'}"; value="${value#\'}"
    case "$key" in
        global.extra-index-url|:env:.extra-index-url) pip_env+=("PIP_EXTRA_INDEX_URL=$value") ;;
        global.find-links|:env:.find-links) pip_env+=("PIP_FIND_LINKS=$value") ;;
        global.constraint) pip_env+=("PIP_CONSTRAINT=$value") ;;
        global.cert|:env:.cert) pip_env+=("PIP_CERT=/etc/ssl/certs/ca-certificates.crt") ;;
    esac
    for word in $value; do
        word="${word#file://}"
        [[ "$word" == /* && -e "$word" && "$word" != /etc/ssl/* ]] || continue
        dir="$word"; [[ -d "$dir" ]] || dir="$(dirname "$word")"
        [[ "$dir" =~ ^(/opt/[^/]+) ]] && dir="${BASH_REMATCH[1]}"  # an index's pages link to ../files
        [[ "$dir" == /opt/* || "$dir" == /etc/xdg/pip ]] && [[ " ${mounts[*]} " != *" $dir:$dir:ro "* ]] \
            && mounts+=(-v "$dir:$dir:ro")
    done
done < <(python3 -m pip config list 2>/dev/null | sort -u)

# --- 1. base image -------------------------------------------------------------------------------------------
make_base() {
    local root="$WORK/rootfs"
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || fail "debootstrap failed (see $WORK/debootstrap.log)"
    # this machine's extra CAs (a TLS-intercepting proxy), so pip in RUN steps can reach PyPI
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$root/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    fi
    local c; c=$("${B[@]}" from scratch)
    "${B[@]}" copy "$c" "$root" / >/dev/null
    for kv in "${pip_env[@]}"; do "${B[@]}" config --env "$kv" "$c"; done
    "${B[@]}" commit -q "$c" "$BASE" >/dev/null
    "${B[@]}" rm "$c" >/dev/null
    rm -rf "$root"
}

# --- 2. the image --------------------------------------------------------------------------------------------
build_image() {
    ctx="$(mktemp -d)"
    cp -r "$REPO"/{pyproject.toml,README.md,.dockerignore,comfy_worker,gpu_orchestrator,worker_wgp,docker} "$ctx/"
    cp "$VENDOR" "$ctx/docker/vendor/comfyui.tar.gz"
    # the Wan2GP stand-in as the vendored checkout (one top-level folder, like a GitHub tarball)
    mkdir -p "$ctx/wan2gp-src/Wan2GP"
    cp -r "$REPO/tests/standins/wan2gp/." "$ctx/wan2gp-src/Wan2GP/"
    echo "# the test stand-in of Wan2GP needs nothing beyond the standard library and ffmpeg" \
        >"$ctx/wan2gp-src/Wan2GP/requirements.txt"
    tar --exclude=__pycache__ -czf "$ctx/docker/vendor/wan2gp.tar.gz" -C "$ctx/wan2gp-src" Wan2GP
    rm -rf "$ctx/wan2gp-src"
    # overlay: keep each step as a layer (a rebuild after a code change reuses the rest); vfs would copy the
    # whole root for every step, so there one working container is committed once
    local layers=--layers=false
    [[ "$driver" == overlay ]] && layers=--layers
    "${B[@]}" bud --isolation chroot --format docker "$layers" -q \
        --build-arg BASE_IMAGE="$BASE" --build-arg CUDA=0 --build-arg CUSTOM_NODES=0 --build-arg WAN2GP=1 \
        --build-arg TORCH_SPEC="$TORCH_SPEC" "${mounts[@]}" \
        -f "$ctx/docker/Dockerfile" -t "$IMAGE" "$ctx" >"$WORK/build.log" 2>&1 \
        || { tail -40 "$WORK/build.log" >&2; fail "the image did not build (log: $WORK/build.log)"; }
}

if ((only_checks)); then
    "${B[@]}" inspect "$IMAGE" >/dev/null 2>&1 || fail "no image from a previous --keep run; run without --only-checks"
else
    if "${B[@]}" inspect "$BASE" >/dev/null 2>&1; then step "base image: cached"; else timed base make_base; fi
    timed build build_image
    step "image size: $("${B[@]}" images --format '{{.Size}}' "$IMAGE")"
fi

# --- 3. run it -----------------------------------------------------------------------------------------------
mapfile -t entry < <("${B[@]}" inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
mapfile -t cmd < <("${B[@]}" inspect --type image --format '{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
[[ "${entry[*]}" == "/usr/bin/tini -g -- /opt/comfy-worker/entrypoint.sh" ]] || fail "unexpected ENTRYPOINT: ${entry[*]}"
[[ "${cmd[*]}" == "python -m comfy_worker" ]] || fail "unexpected CMD: ${cmd[*]}"
ctr=$("${B[@]}" from "$IMAGE")
"${B[@]}" copy "$ctr" "$REPO/examples/hello_comfy.json" /home/worker/hello_comfy.json >/dev/null
# runs the image's ENTRYPOINT with the given env (KEY=VALUE ...) and command (default: the CMD)
run() {
    local envs=() arg
    while [[ $# -gt 0 && "$1" == *=* ]]; do envs+=(--env "$1"); shift; done
    (($#)) || set -- "${cmd[@]}"
    "${B[@]}" run --isolation chroot "${envs[@]}" "$ctr" -- "${entry[@]}" "$@"
}
# buildah's chroot isolation shares this machine's network: ComfyUI gets a free port, not 8188
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# (TINI_SUBREAPER: under buildah tini is not PID 1, as it is under docker and RunPod)
GOOD=(TINI_SUBREAPER=1 WORKER_ID=image-test DATABASE_URL=sqlite:////home/worker/queue.db COMFY_ARGS=--cpu COMFY_PORT="$port"
      MODELS_DIR=/home/worker/models LOG_FORMAT=json HEARTBEAT_INTERVAL=1 POLL_INTERVAL=0.5 SHUTDOWN_GRACE_S=10)

check_refusals() {
    local out code=0
    out=$(run TINI_SUBREAPER=1 WORKER_ID= RUNPOD_POD_ID= DATABASE_URL=mysql://x MODELS_SYNC=maybe 2>&1) || code=$?
    [[ $code -eq 2 ]] || fail "bad environment: expected exit 2, got $code: $out"
    for var in WORKER_ID DATABASE_URL MODELS_SYNC; do
        grep -q "entrypoint: ERROR: $var: " <<<"$out" || fail "no line for $var in: $out"
    done
    grep -q "3 problem(s)" <<<"$out" || fail "expected 3 problems in: $out"
    out=$(run TINI_SUBREAPER=1 WORKER_ID=x SUPABASE_URL=https://p.supabase.co 2>&1) && fail "SUPABASE_URL without a key was accepted"
    grep -q "SUPABASE_SERVICE_ROLE_KEY: not set, but SUPABASE_URL is" <<<"$out" || fail "unexpected: $out"
    out=$(run TINI_SUBREAPER=1 RUNPOD_POD_ID=pod123 DATABASE_URL=sqlite:////tmp/q.db comfy-worker --version 2>&1) \
        || fail "RUNPOD_POD_ID alone was refused: $out"
    grep -q "starting runpod-pod123" <<<"$out" || fail "the worker id did not come from RUNPOD_POD_ID: $out"
}

check_volume() {
    # a volume a root container used before: root-owned model folders and partial downloads
    "${B[@]}" run --isolation chroot --user root "$ctr" -- \
        sh -c 'mkdir -p /home/worker/models/loras /home/worker/models/.comfy-worker/downloads && touch /home/worker/models/.comfy-worker/downloads/x.partial' \
        || fail "could not prepare the root-owned volume"
    local out
    out=$(run "${GOOD[@]}" sh -c 'touch /home/worker/models/loras/new.safetensors && echo more >>/home/worker/models/.comfy-worker/downloads/x.partial && id -un' 2>/dev/null) \
        || fail "the worker user cannot write the volume's model folders: $out"
    [[ "$out" == worker ]] || fail "the command ran as '$out', not as worker"
}

check_version() {
    local out
    out=$(run "${GOOD[@]}" comfy-worker --version 2>/dev/null) || fail "comfy-worker --version failed"
    [[ "$out" == "$(cd "$REPO" && python3 -c 'import re; print(re.search(r"^__version__ = \"(.+)\"", open("comfy_worker/__init__.py").read(), re.M)[1])')" ]] \
        || fail "comfy-worker --version printed '$out'"
    step "comfy-worker --version: $out"
}

check_bytecode() {
    # every ComfyUI module has its .pyc from the build, valid for its source (a pod's first boot compiles nothing)
    local out
    out=$(run "${GOOD[@]}" /opt/comfyui-venv/bin/python -c '
import importlib.util, pathlib, sys
srcs = [p for p in pathlib.Path("/opt/ComfyUI").rglob("*.py") if "custom_nodes" not in p.parts]
stale = []
for src in srcs:
    pyc = pathlib.Path(importlib.util.cache_from_source(str(src)))
    data = pyc.read_bytes()[8:16] if pyc.exists() else b""
    if len(data) < 8 or int.from_bytes(data[:4], "little") != int(src.stat().st_mtime) & 0xFFFFFFFF:
        stale.append(str(src))
print(len(srcs), len(stale), " ".join(stale[:5]))
sys.exit(1 if stale or not srcs else 0)' 2>&1) || fail "ComfyUI modules without a valid .pyc (sources, stale, first few): $out"
    out=$(tail -n 1 <<<"$out")  # the entrypoint's own lines come first
    step "ComfyUI bytecode: ${out%% *} modules, each with a valid .pyc from the build"
}

check_task() {
    local out tid
    run "${GOOD[@]}" comfy-worker migrate >/dev/null 2>&1 || fail "comfy-worker migrate failed"
    tid=$(run "${GOOD[@]}" comfy-worker submit /home/worker/hello_comfy.json 2>/dev/null) || fail "submit failed"
    run "${GOOD[@]}" python -m comfy_worker --exit-when-idle >"$WORK/worker.log" 2>&1 \
        || { tail -30 "$WORK/worker.log" >&2; fail "the worker exited non-zero"; }
    out=$(run "${GOOD[@]}" python -c "
import json, sqlite3, sys
row = sqlite3.connect('/home/worker/queue.db').execute(
    'select status, error, result from tasks where task_id = ?', (sys.argv[1],)).fetchone()
print(row[0], row[1] or '', json.loads(row[2] or '{}').get('outputs', [{}])[0].get('storage_path', ''))
" "$tid" 2>/dev/null)
    [[ "$out" == complete*"comfy/$tid/hello_comfy_"*.png ]] || { tail -30 "$WORK/worker.log" >&2; fail "task $tid: $out"; }
    step "comfy task on the image's ComfyUI 0.3.64 (CPU): $out"
}

check_wan2gp() {
    local out tid
    # the stage's layout as built (a fresh container: the checks above ran the entrypoint, which re-points the
    # links at their MODELS_DIR): the checkout, its venv, its model folders linked to the default volume
    local fresh; fresh=$("${B[@]}" from "$IMAGE")
    out=$("${B[@]}" run --isolation chroot "$fresh" -- sh -c 'cat /opt/Wan2GP/.wan2gp-ref; readlink /opt/Wan2GP/ckpts /opt/Wan2GP/loras; stat -c %U /opt/Wan2GP/wgp.py; /opt/wan2gp-venv/bin/python -c "import sys; print(sys.prefix)"' 2>&1) \
        || { "${B[@]}" rm "$fresh" >/dev/null; fail "the Wan2GP stage is incomplete: $out"; }
    "${B[@]}" rm "$fresh" >/dev/null
    [[ "$out" == $'vendor/wan2gp.tar.gz\n/runpod-volume/models/wan2gp\n/runpod-volume/models/loras/wan2gp\nworker\n/opt/wan2gp-venv' ]] \
        || fail "unexpected Wan2GP layout: $out"
    # the entrypoint's wiring: WAN2GP_PATH / WAN2GP_PYTHON set, ckpts/ and loras/ re-pointed at MODELS_DIR
    # shellcheck disable=SC2016  # expanded by the container's shell
    out=$(run "${GOOD[@]}" sh -c 'echo "$WAN2GP_PATH $WAN2GP_PYTHON"; readlink /opt/Wan2GP/ckpts /opt/Wan2GP/loras; test -d /opt/Wan2GP/ckpts/ && test -w /opt/Wan2GP/loras/ && echo writable' 2>/dev/null) \
        || fail "the entrypoint's Wan2GP wiring failed: $out"
    [[ "$out" == $'/opt/Wan2GP /opt/wan2gp-venv/bin/python\n/home/worker/models/wan2gp\n/home/worker/models/loras/wan2gp\nwritable' ]] \
        || fail "unexpected Wan2GP wiring: $out"
    # a t2v task through the worker (both engines configured; Wan2GP starts on its first task)
    tid=$(run "${GOOD[@]}" python -c "
import asyncio
from comfy_worker.config import load_settings
from comfy_worker.models import NewTask
from comfy_worker.store import open_store
async def main():
    store = open_store(load_settings(dotenv=None))
    await store.connect(); await store.migrate()
    task = await store.enqueue(NewTask('t2v', {'prompt': 'image test', 'resolution': '64x48', 'video_length': 9,
                                              'num_inference_steps': 3}))
    print(task.task_id); await store.close()
asyncio.run(main())" 2>/dev/null) || fail "could not queue the t2v task"
    run "${GOOD[@]}" python -m comfy_worker --exit-when-idle >"$WORK/worker-wan2gp.log" 2>&1 \
        || { tail -30 "$WORK/worker-wan2gp.log" >&2; fail "the worker exited non-zero on the t2v task"; }
    out=$(run "${GOOD[@]}" python -c "
import json, sqlite3, sys
row = sqlite3.connect('/home/worker/queue.db').execute(
    'select status, error, result from tasks where task_id = ?', (sys.argv[1],)).fetchone()
print(row[0], row[1] or '', json.loads(row[2] or '{}').get('outputs', [{}])[0].get('storage_path', ''))
" "$tid" 2>/dev/null)
    [[ "$out" == complete* && "$out" == *.mp4 ]] || { tail -30 "$WORK/worker-wan2gp.log" >&2; fail "t2v task $tid: $out"; }
    grep -q '"wan2gp_starting"' "$WORK/worker-wan2gp.log" || fail "the t2v task did not start the Wan2GP child"
    step "t2v task on the image's Wan2GP stage (stand-in): $out"
}

# the first process under $1 (by parent links in /proc) whose command is $2
descendant_running() {
    local todo=("$1") p c
    while ((${#todo[@]})); do
        p="${todo[0]}"; todo=("${todo[@]:1}")
        while read -r -d ' ' c; do
            if [[ "$(tr '\0' ' ' </proc/"$c"/cmdline 2>/dev/null)" == "$2 "* ]]; then echo "$c"; return 0; fi
            todo+=("$c")
        done < <(cat /proc/"$p"/task/*/children 2>/dev/null)
    done
    return 1
}

check_sigterm() {
    local pid code=0 log="$WORK/sigterm.log" tini
    run "${GOOD[@]}" python -c "import pathlib; p = pathlib.Path('/home/worker/models/vae'); p.mkdir(parents=True, exist_ok=True); (p / 'volume_test_vae.safetensors').write_bytes(b'')" \
        || fail "could not place a model file on the test volume"
    # ComfyUI alone (WAN2GP_PATH set empty): with both engines each starts on its first task, and this check
    # asks ComfyUI for its model list as soon as the worker has registered
    run "${GOOD[@]}" WAN2GP_PATH= >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 240); do
        grep -q '"worker_registered"' "$log" && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; fail "the worker died before registering"; }
        sleep 0.5
    done
    grep -q '"worker_registered"' "$log" || fail "the worker did not register within 120 s"
    # ComfyUI lists the model placed on the "volume" (the entrypoint's extra_model_paths.yaml)
    curl -fsS "http://127.0.0.1:$port/object_info/VAELoader" | grep -q '"volume_test_vae.safetensors"' \
        || fail "ComfyUI does not list MODELS_DIR/vae/volume_test_vae.safetensors"
    # the worker's heartbeat metadata lists the manifest's files that are not on the volume
    grep -q '"models_missing"' "$log" || fail "no models_missing warning at start"
    tini=$(descendant_running "$pid" /usr/bin/tini) || fail "no tini process under the buildah run ($pid)"
    kill -TERM "$tini"  # what `docker stop` / RunPod do: SIGTERM to PID 1 of the container
    wait "$pid" || code=$?
    [[ $code -eq 0 ]] || { tail -20 "$log" >&2; fail "SIGTERM: exit code $code, expected 0"; }
    grep -q '"worker_stopped"' "$log" || fail "no worker_stopped after SIGTERM"
    step "SIGTERM: the worker drained and exited 0"
}

timed refusals check_refusals
timed volume check_volume
timed version check_version
timed bytecode check_bytecode
timed task check_task
timed wan2gp check_wan2gp
timed sigterm check_sigterm
step "all checks passed in $(( $(date +%s) - t0 )) s (base ${took[base]:-cached} s, build ${took[build]:-reused} s)"
