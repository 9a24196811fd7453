#!/usr/bin/env bash
# comfy-worker container entrypoint (tini runs it; it ends by exec'ing the CMD, so SIGTERM reaches the worker).
#
# 1. Validates the environment: one line per missing or bad variable, exit 2 if any.
# 2. Points ComfyUI at the model folders on the network volume (an extra_model_paths.yaml for MODELS_DIR), and
#    an image built with WAN2GP=1 at Wan2GP's (MODELS_DIR/wan2gp for its checkpoints, MODELS_DIR/loras/wan2gp
#    for its LoRAs) with WAN2GP_PATH / WAN2GP_PYTHON set (WAN2GP_PATH= (empty) turns Wan2GP off;
#    WAN2GP_IMAGE_PATH, default /opt/Wan2GP, is where the image has it: tests point it elsewhere).
# 3. MODELS_SYNC=true: `comfy-worker models sync` first (a failure is reported, the worker still starts and
#    lists what is missing in its heartbeat metadata).
# 4. Started as root (RunPod does): makes the volume's model folder writable for the `worker` user and drops
#    to it; started as any other user: runs as that user.
set -uo pipefail

say() { echo "entrypoint: $*" >&2; }
problems=()
problem() { problems+=("$1"); }
is_bool() { [[ "${1,,}" =~ ^(1|0|true|false|yes|no|on|off)?$ ]]; }
truthy() { [[ "${1,,}" =~ ^(1|true|yes|on)$ ]]; }

# --- 1. the environment ------------------------------------------------------------------------------------
if [[ -z "${WORKER_ID:-}" ]]; then
    if [[ -n "${RUNPOD_POD_ID:-}" ]]; then
        export WORKER_ID="runpod-${RUNPOD_POD_ID}"
    else
        problem "WORKER_ID: not set (and no RUNPOD_POD_ID): give every worker a unique id, e.g. WORKER_ID=gpu-box-1"
    fi
elif [[ ! "$WORKER_ID" =~ ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$ ]]; then
    problem "WORKER_ID: '${WORKER_ID}' is not a valid id: use letters, digits and . _ : - (at most 128)"
fi

db="${DATABASE_URL:-}" sb_url="${SUPABASE_URL:-}" sb_key="${SUPABASE_SERVICE_ROLE_KEY:-}"
if [[ -n "$db" && ! "$db" =~ ^(postgresql|postgres|sqlite): ]]; then
    problem "DATABASE_URL: expected postgresql://user:pass@host:5432/db or sqlite:///path/file.db, got '${db%%:*}:…'"
fi
if [[ -n "$sb_url" && -z "$sb_key" ]]; then
    problem "SUPABASE_SERVICE_ROLE_KEY: not set, but SUPABASE_URL is: set both (the key is in Settings → API)"
elif [[ -z "$sb_url" && -n "$sb_key" ]]; then
    problem "SUPABASE_URL: not set, but SUPABASE_SERVICE_ROLE_KEY is: set both, e.g. https://<ref>.supabase.co"
elif [[ -n "$sb_url" && ! "$sb_url" =~ ^https?:// ]]; then
    problem "SUPABASE_URL: expected https://<ref>.supabase.co, got '${sb_url}'"
fi
if [[ -z "$db" && -z "$sb_url" && -z "$sb_key" ]]; then
    problem "DATABASE_URL: not set (nor SUPABASE_URL): a pod needs the shared queue, e.g. DATABASE_URL=postgresql://… or SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY"
fi

is_bool "${MODELS_SYNC:-}" || problem "MODELS_SYNC: expected true or false, got '${MODELS_SYNC}'"
MODELS_DIR="${MODELS_DIR:-/runpod-volume/models}"
[[ "$MODELS_DIR" == /* ]] || problem "MODELS_DIR: must be an absolute path, got '${MODELS_DIR}'"
if [[ -n "${MODELS_MANIFEST:-}" && ! -f "$MODELS_MANIFEST" ]]; then
    problem "MODELS_MANIFEST: no file at ${MODELS_MANIFEST} (the image's manifest is /opt/comfy-worker/models.yaml)"
fi
COMFY_PATH="${COMFY_PATH:-/opt/ComfyUI}"
[[ -f "$COMFY_PATH/main.py" ]] || problem "COMFY_PATH: no ComfyUI at ${COMFY_PATH} (main.py missing)"

# Wan2GP in the image (WAN2GP=1 builds): on unless WAN2GP_PATH is set (empty: off; a path: that checkout)
WAN2GP_IMAGE_PATH="${WAN2GP_IMAGE_PATH:-/opt/Wan2GP}"
WAN2GP_IMAGE_PYTHON="${WAN2GP_IMAGE_PYTHON:-/opt/wan2gp-venv/bin/python}"
if [[ -z "${WAN2GP_PATH+set}" && -f "$WAN2GP_IMAGE_PATH/wgp.py" ]]; then
    export WAN2GP_PATH="$WAN2GP_IMAGE_PATH"
fi
# the image's Wan2GP runs on the image's venv, whether WAN2GP_PATH was left unset or set to it by hand
if [[ -n "${WAN2GP_PATH:-}" && "$WAN2GP_PATH" == "$WAN2GP_IMAGE_PATH" && -z "${WAN2GP_PYTHON:-}" ]]; then
    export WAN2GP_PYTHON="$WAN2GP_IMAGE_PYTHON"
fi
if [[ -n "${WAN2GP_PATH:-}" ]]; then
    [[ -f "$WAN2GP_PATH/wgp.py" ]] || problem "WAN2GP_PATH: no Wan2GP at ${WAN2GP_PATH} (wgp.py missing): point it at a checkout, or set it empty to run ComfyUI alone"
    if [[ -n "${WAN2GP_PYTHON:-}" && ! -x "$WAN2GP_PYTHON" ]]; then
        problem "WAN2GP_PYTHON: ${WAN2GP_PYTHON} is not an executable: set it to the python of Wan2GP's environment"
    fi
fi

if ((${#problems[@]})); then
    for p in "${problems[@]}"; do echo "entrypoint: ERROR: $p" >&2; done
    echo "entrypoint: ${#problems[@]} problem(s) with the environment; the worker was not started" >&2
    exit 2
fi
export MODELS_DIR COMFY_PATH

# --- 2. users and folders ----------------------------------------------------------------------------------
run_as=()
if [[ "$(id -u)" == 0 && "${RUN_AS_ROOT:-false}" != "true" ]] && id worker >/dev/null 2>&1; then
    # the volume is root-owned on RunPod: give the worker user the folders it writes, then drop to it
    mkdir -p "$MODELS_DIR/.comfy-worker" 2>/dev/null
    # (the folder and its model folders, not the files: those stay readable; state and partial downloads too)
    drop=(setpriv --reuid=worker --regid=worker --init-groups --)
    if find "$MODELS_DIR" -maxdepth 1 -type d -exec chown worker:worker {} + 2>/dev/null \
        && chown -R worker:worker "$MODELS_DIR/.comfy-worker" 2>/dev/null \
        && "${drop[@]}" test -w "$MODELS_DIR"; then
        run_as=("${drop[@]}")
    else
        say "warning: ${MODELS_DIR} is not writable for user 'worker' (a root-squashed volume?); running as root"
    fi
fi
home="$( ((${#run_as[@]})) && getent passwd worker | cut -d: -f6 || echo "${HOME:-/tmp}")"
[[ -d "$MODELS_DIR" ]] || say "warning: ${MODELS_DIR} does not exist (no network volume mounted?): every model will be reported missing"

# ComfyUI reads model folders from the volume (and still from its own models/ folder)
paths_yaml="$home/extra_model_paths.yaml"
cat >"$paths_yaml" <<EOF
# written by the comfy-worker entrypoint at $(date -u +%FT%TZ)
comfy_worker_volume:
    base_path: ${MODELS_DIR}
    is_default: true
    checkpoints: checkpoints
    diffusion_models: |
        diffusion_models
        unet
    text_encoders: |
        text_encoders
        clip
    clip_vision: clip_vision
    vae: vae
    loras: loras
    audio_encoders: audio_encoders
    upscale_models: upscale_models
    controlnet: controlnet
EOF
((${#run_as[@]})) && chown worker:worker "$paths_yaml"
export COMFY_ARGS="${COMFY_ARGS:-} --extra-model-paths-config ${paths_yaml}"
# Wan2GP's model folders on the volume too: the image's ckpts/ and loras/ links point at them (re-pointed when
# MODELS_DIR is not the default); the folders are created so that Wan2GP can write into them
if [[ -n "${WAN2GP_PATH:-}" && "$WAN2GP_PATH" == "$WAN2GP_IMAGE_PATH" ]]; then
    for link in "ckpts:wan2gp" "loras:loras/wan2gp"; do
        name="${link%%:*}" target="$MODELS_DIR/${link#*:}"
        mkdir -p "$target" 2>/dev/null && ((${#run_as[@]})) && chown worker:worker "$target" "$(dirname "$target")"
        if [[ -L "$WAN2GP_PATH/$name" && "$(readlink "$WAN2GP_PATH/$name")" != "$target" ]]; then
            ln -sfn "$target" "$WAN2GP_PATH/$name" || say "warning: cannot point $WAN2GP_PATH/$name at $target"
        fi
    done
fi
# node packs that download their own checkpoints keep them on the volume, once for every pod
export AUX_ANNOTATOR_CKPTS_PATH="${AUX_ANNOTATOR_CKPTS_PATH:-$MODELS_DIR/annotator_ckpts}"
export HOME="$home"
((${#run_as[@]})) && export USER=worker LOGNAME=worker

# --- 3. models -----------------------------------------------------------------------------------------------
if truthy "${MODELS_SYNC:-}"; then
    say "MODELS_SYNC=true: syncing ${MODELS_MANIFEST:-the manifest} into ${MODELS_DIR}${MODELS_GROUPS:+ (groups ${MODELS_GROUPS})}"
    touch /tmp/comfy-worker-syncing 2>/dev/null
    if ! "${run_as[@]}" comfy-worker models sync; then
        say "warning: models sync did not install everything (see above); starting the worker anyway"
    fi
    rm -f /tmp/comfy-worker-syncing
fi

# --- 4. the worker -------------------------------------------------------------------------------------------
who="$(id -un)"
((${#run_as[@]})) && who=worker
say "starting ${WORKER_ID} as ${who}: $*"
exec "${run_as[@]}" "$@"
