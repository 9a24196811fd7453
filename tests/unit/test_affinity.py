"""comfy_worker.affinity: the claim preference a worker derives from what its GPU holds."""

from __future__ import annotations

from comfy_worker.affinity import claim_preference
from comfy_worker.models import ClaimPreference
from worker_wgp.tasks import TASK_TYPES, model_for

ENGINES = {"comfy": "comfyui", "prompt_runner": "comfyui", **{t: "wan2gp" for t in TASK_TYPES}}
MODELS = {t: model_for(t) for t in TASK_TYPES}


def test_a_worker_holding_wan2gp_i2v_prefers_i2v_then_other_wan2gp_types() -> None:
    pref = claim_preference(engine="wan2gp", model="i2v", task_engines=ENGINES, task_models=MODELS, max_wait_s=300)
    assert pref is not None and pref.max_wait_s == 300
    assert pref.weights["i2v"] == 2.0 and pref.weights["t2v"] == 1.0 and pref.weights["vace"] == 1.0
    assert "comfy" not in pref.weights and "prompt_runner" not in pref.weights
    # types sharing the loaded model weigh alike
    vace = claim_preference(engine="wan2gp", model="vace_14B_cocktail_2_2", task_engines=ENGINES, task_models=MODELS,
                            max_wait_s=300)
    assert vace is not None and vace.weights["vace"] == vace.weights["vace_22"] == 2.0 and vace.weights["vace_21"] == 1


def test_comfyui_resident_prefers_its_types_and_nothing_resident_means_plain_order() -> None:
    pref = claim_preference(engine="comfyui", model=None, task_engines=ENGINES, task_models=MODELS, max_wait_s=60)
    assert pref == ClaimPreference({"comfy": 2.0, "prompt_runner": 2.0}, 60)
    assert claim_preference(engine=None, model=None, task_engines=ENGINES, max_wait_s=60) is None
    assert claim_preference(engine="wan2gp", model="i2v", task_engines=ENGINES, max_wait_s=0) is None
    assert claim_preference(engine="wan2gp", model="i2v", task_engines={"comfy": "comfyui"}, max_wait_s=60) is None
