"""Which claim preference a worker sends, from what its GPU holds (pure; sql/006_claim_affinity.sql applies it).

The daemon (phase 2 of issue 11) calls :func:`claim_preference` before every claim with the engine that holds
the GPU and, where the engine knows it, the loaded model:

* weight 2 — task types that run on the resident engine *and* its loaded model (with no model known, e.g.
  ComfyUI, every type of the resident engine): no switch at all;
* weight 1 — other types of the resident engine: a model load, but no engine hand-over;
* no weight — everything else.

No preference (plain claim order) when nothing is resident or ENGINE_SWITCH_MAX_WAIT_S is 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from comfy_worker.models import ClaimPreference

SAME_MODEL = 2.0
SAME_ENGINE = 1.0


def claim_preference(
    *,
    engine: str | None,
    model: str | None,
    task_engines: Mapping[str, str],
    task_models: Mapping[str, str] | None = None,
    max_wait_s: float,
) -> ClaimPreference | None:
    """The preference for a worker whose GPU holds ``engine`` (with ``model`` loaded, when known).

    ``task_engines``: task type → engine name, for the types this worker claims; ``task_models``: task type →
    the model it runs (only for engines that report their loaded model)."""
    if engine is None or max_wait_s <= 0:
        return None
    models = task_models or {}
    weights: dict[str, float] = {}
    for task_type, task_engine in task_engines.items():
        if task_engine != engine:
            continue
        same_model = model is None or task_type not in models or models[task_type] == model
        weights[task_type] = SAME_MODEL if same_model else SAME_ENGINE
    if not weights:
        return None
    return ClaimPreference(weights, max_wait_s)
