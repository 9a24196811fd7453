"""``python -m comfy_worker --worker-id X``: the container's CMD (the daemon is the default command)."""

from __future__ import annotations

import sys

from comfy_worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
