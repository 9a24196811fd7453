"""The worker daemon: owns time (claiming, pipelining, heartbeats, recovery, cancellation, shutdown).

:mod:`.core` holds the :class:`Daemon`; this face hands its public names on, so ``comfy_worker.daemon`` imports
as before.
"""

from __future__ import annotations

from comfy_worker.daemon.core import Daemon, Inflight, work_root

__all__ = ["Daemon", "Inflight", "work_root"]
