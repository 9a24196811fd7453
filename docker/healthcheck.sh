#!/usr/bin/env bash
# Docker HEALTHCHECK: healthy while the entrypoint syncs models (that can take a while), then when ComfyUI
# answers on 127.0.0.1 (the worker supervises and restarts it; the queue sees the worker's own heartbeats).
[[ -e /tmp/comfy-worker-syncing ]] && exit 0
exec curl -fsS -o /dev/null --max-time 4 "http://127.0.0.1:${COMFY_PORT:-8188}/system_stats"
