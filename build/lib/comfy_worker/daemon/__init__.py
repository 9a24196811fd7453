"""The worker daemon: owns time (claiming, pipelining, heartbeats, recovery, cancellation, shutdown).

:mod:`.core` assembles the :class:`Daemon`, runs it and shuts it down; its seams live beside it, as mixins:
:mod:`.claiming` (the claim loop), :mod:`.inflight` (one task's lifecycle, from claim to its final report and
cleanup hand-off) and :mod:`.heartbeat` (heartbeats, lease loss, draining, stale recovery). This face hands the
public names on, so ``comfy_worker.daemon`` imports as before.
"""

from __future__ import annotations

from comfy_worker.daemon.core import Daemon, Inflight, work_root

__all__ = ["Daemon", "Inflight", "work_root"]
