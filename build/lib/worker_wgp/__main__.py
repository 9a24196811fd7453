"""``python -m worker_wgp --worker-id X``: a worker that runs the Wan2GP task types alone, for operators who keep
ComfyUI and Wan2GP in two processes (one GPU each, or a ComfyUI worker elsewhere).

It is ``python -m comfy_worker worker --engine wan2gp``: the daemon, queue, storage and settings are comfy-worker's
(WAN2GP_PATH required; COMFY_* ignored; TASK_TYPES may narrow the Wan2GP types), so this process execs that
command rather than importing the command line (nothing imports ``comfy_worker.cli``). Every flag of the
``worker`` command is accepted (``--worker-id``, ``--exit-when-idle``, ``--log-level``, …).
"""

from __future__ import annotations

import os
import sys


def argv_for(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "comfy_worker", "worker", "--engine", "wan2gp", *args]


def main(args: list[str] | None = None) -> None:
    argv = argv_for(list(sys.argv[1:] if args is None else args))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # noqa: S606 - same pid: signals, exit code and the presence lock are the worker's


if __name__ == "__main__":
    main()
