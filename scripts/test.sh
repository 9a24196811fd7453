#!/usr/bin/env bash
# Run the test suite (and the linter) against real PostgreSQL, a real CPU ComfyUI and real ffmpeg.
# Starts the local PostgreSQL cluster if it is down. Extra arguments go to pytest (e.g. -k conformance).
# A run that collects no test fails: an empty run proves nothing.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null; then
        echo "test: starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
        for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
    fi
    pg_isready -h 127.0.0.1 -p 5432 -q || { echo "test: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
fi

.venv/bin/ruff check . || exit 1

.venv/bin/python -m pytest "$@"
code=$?
if [[ $code -eq 5 ]]; then
    echo "test: pytest collected no tests; that is a failure" >&2
    exit 1
fi
[[ $code -eq 0 ]] || exit $code

# A whole run (no pytest arguments) as root also builds docker/Dockerfile on a debootstrapped Debian base and
# runs the image (no registry, GPU or GitHub; 4-11 min, figures in docs/benchmarks.md). buildah's chroot builds
# need root. SKIP_IMAGE_TEST=1 leaves it out.
if [[ $# -eq 0 && $(id -u) -eq 0 && "${SKIP_IMAGE_TEST:-0}" != 1 ]]; then
    bash scripts/test_image.sh || exit $?
elif [[ $# -eq 0 ]]; then
    echo "test: image test skipped (needs root, and SKIP_IMAGE_TEST unset)"
fi
exit 0
