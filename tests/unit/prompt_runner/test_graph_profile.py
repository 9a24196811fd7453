from __future__ import annotations

import copy

import pytest
import yaml

from comfy_worker.errors import WorkflowInvalid
from comfy_worker.handlers.prompt_runner import graph
from comfy_worker.handlers.prompt_runner.build import build_job_workflow
from comfy_worker.handlers.prompt_runner.planner import plan
from comfy_worker.handlers.prompt_runner.profile import ProfileError, load_profile, shipped_profiles_dir
from comfy_worker.handlers.prompt_runner.prompt_file import parse_file

from .conftest import PROMPT_FILES

ROOT = "/workspace/ComfyUI/output"
SUNSET_POS = (
    "A beautiful sunset over the ocean with waves crashing on the shore,\n"
    "golden hour lighting, cinematic, 4k, highly detailed"
)


@pytest.fixture(scope="module")
def profile():
    return load_profile("wan22_vace_v2v")


@pytest.fixture(scope="module")
def sunset_plan():
    return plan(parse_file(PROMPT_FILES / "sunset_beach.txt"))


def test_shipped_workflows_are_the_fixture_workflows(profile, fixture_prompt, fixture_combine):
    assert profile.base_workflow == fixture_prompt
    assert profile.combine_workflow == fixture_combine
    assert profile.join_mode == "progressive"
    assert profile.roles["lora"].node == "309:298"  # group sub-node id kept as is


def _edits(mods):
    """What the modifications say they did: (node, input) → value set, or "<absent>" when dropped."""
    out = {}
    for m in mods:
        if m["op"] == "set":
            out[(m["node"], m["input"])] = m["value"]
        elif m["op"] in ("drop_input", "reroute"):
            out[(m["node"], m["input"])] = "<absent>" if m["op"] == "drop_input" else m["to"]
    return out


def _check(base, wf, mods, expected, expected_removed):
    """The modification log is exactly the expected edits, and the graph differs from the base by exactly
    those edits (minus the ones that set a value the base already had)."""
    changed, removed = _changes(base, wf)
    assert _edits(mods) == expected
    assert removed == expected_removed
    assert changed == {k: v for k, v in expected.items() if base[k[0]]["inputs"].get(k[1], "<absent>") != v}
    return changed


def _changes(base, wf):
    """(set inputs, removed nodes) between two workflows."""
    removed = set(base) - set(wf)
    changed = {}
    for nid in set(base) & set(wf):
        a, b = base[nid]["inputs"], wf[nid]["inputs"]
        for k in set(a) | set(b):
            if a.get(k, "<absent>") != b.get(k, "<absent>"):
                changed[(nid, k)] = b.get(k, "<absent>")
    return changed, removed


def test_high_graph_carries_exactly_the_documented_changes(profile, sunset_plan, fixture_prompt, object_info):
    first, second = sunset_plan.jobs[0], sunset_plan.jobs[2]
    wf, mods = build_job_workflow(profile, first, object_info=object_info)
    removed = {"338", "341", "343", "344", "340", "364", "362", "363", "358", "359"}
    expected = {
        ("309:298", "lora"): "wan2.2_high_t2v.safetensors",
        ("4", "model"): "Wan2.2_HIGH_Low_Noise_14B_VACE-Q8_0.gguf",
        ("54", "start_step"): 0,
        ("54", "end_step"): 4,
        ("54", "samples"): "<absent>",  # no latent input on the HIGH pass
        ("144", "ref_images"): "<absent>",  # chunk 1: no reference
        ("53", "positive_prompt"): SUNSET_POS,
        ("53", "negative_prompt"): "blurry, low quality, distorted, watermark",
        ("19", "value"): 101,
        ("348", "value"): 0,
        ("365", "folder_path"): f"{ROOT}/sunset_beach/latents",
        ("365", "subfolder_name"): "chunk_001",
        ("365", "filename"): "sunset_beach_chunk_001_high",
    }
    _check(fixture_prompt, wf, mods, expected, removed)
    assert graph.dangling_links(wf, object_info) == []
    assert {m["node"] for m in mods if m["op"] == "remove"} == removed
    # the latent is saved from the sampler: the HIGH pass ends there
    assert wf["365"]["inputs"]["latent"] == ["54", 1]
    assert graph.find_consumers(wf, "365") == []
    # chunk 2 keeps the reference loader and points it at chunk 1's reference frame
    wf2, _ = build_job_workflow(profile, second, object_info=object_info)
    changed2, removed2 = _changes(fixture_prompt, wf2)
    assert removed2 == {"338", "341", "343", "344", "340", "364", "362", "363"}
    assert changed2[("358", "image_path")] == f"{ROOT}/sunset_beach/references/sunset_beach_chunk_001_ref.png"
    assert changed2[("348", "value")] == 101
    assert ("144", "ref_images") not in changed2


def test_low_graph_carries_exactly_the_documented_changes(profile, sunset_plan, fixture_prompt, object_info):
    last_low = sunset_plan.jobs[9]
    wf, mods = build_job_workflow(profile, last_low, object_info=object_info)
    expected = {
        ("309:298", "lora"): "wan2.2_low_t2v.safetensors",
        ("4", "model"): "Wan2.2_T2V_Low_Noise_14B_VACE-Q8_0.gguf",
        ("54", "start_step"): 4,
        ("54", "end_step"): 8,
        ("53", "positive_prompt"): SUNSET_POS,
        ("53", "negative_prompt"): "blurry, low quality, distorted, watermark",
        ("19", "value"): 97,  # 96 frames left: Wan renders 4k+1, the combine keeps 96 (frame_load_cap)
        ("348", "value"): 404,
        ("358", "image_path"): f"{ROOT}/sunset_beach/references/sunset_beach_chunk_004_ref.png",
        ("338", "folder_path"): f"{ROOT}/sunset_beach/latents/chunk_005",
        ("340", "filename_prefix"): "sunset_beach/videos/sunset_beach_chunk_005",
        ("344", "filename_prefix"): "sunset_beach/videos/sunset_beach_chunk_005_last",
    }
    _check(fixture_prompt, wf, mods, expected, {"365", "364", "362", "363"})
    assert wf["54"]["inputs"]["samples"] == ["338", 0]  # LOW refines the HIGH latent
    assert wf["340"]["inputs"]["images"] == ["341", 0]
    assert graph.dangling_links(wf, object_info) == []


def test_progressive_combine_workflows(profile, sunset_plan, fixture_combine, object_info):
    first, second = sunset_plan.combine_jobs[:2]
    wf, mods = build_job_workflow(profile, first, object_info=object_info)
    expected = {
        ("25", "video"): f"{ROOT}/sunset_beach/videos/sunset_beach_chunk_001.mp4",
        ("25", "skip_first_frames"): 0,
        ("25", "frame_load_cap"): 101,
        ("14", "images"): ["33", 0],
        ("14", "filename_prefix"): "sunset_beach/combined/sunset_beach_combined_001",
    }
    # nothing to append to yet: join bypassed, previous loader removed
    _check(fixture_combine, wf, mods, expected, {"30", "40"})
    wf2, _ = build_job_workflow(profile, second, object_info=object_info)
    changed2, removed2 = _changes(fixture_combine, wf2)
    assert removed2 == set()
    assert changed2[("40", "video")] == f"{ROOT}/sunset_beach/combined/sunset_beach_combined_001.mp4"
    last, _ = build_job_workflow(profile, sunset_plan.combine_jobs[-1])
    assert last["14"]["inputs"]["filename_prefix"] == "sunset_beach/final/sunset_beach"
    assert last["25"]["inputs"]["frame_load_cap"] == 96  # the 97 rendered frames of chunk 5, capped at its share
    for w in (wf, wf2, last):
        assert graph.dangling_links(w, object_info) == []


def test_delete_refuses_to_leave_a_required_input_dangling(fixture_prompt, object_info, profile):
    wf = copy.deepcopy(fixture_prompt)
    # 343's images feed SaveImage 344 whose "images" is required in the core object_info
    with pytest.raises(WorkflowInvalid, match=r"node 344: .*required input 'images'") as info:
        graph.delete_nodes(wf, ["343"], object_info=object_info)
    assert info.value.details["node_id"] == "344"
    assert wf == fixture_prompt  # nothing changed on failure
    # unknown custom input counts as required …
    with pytest.raises(WorkflowInvalid, match="node 54"):
        graph.delete_nodes(copy.deepcopy(fixture_prompt), ["338"])
    # … unless the profile lists it as optional: then the input is dropped
    mods = graph.delete_nodes(wf, ["338"], optional_inputs=profile.optional_inputs)
    assert "samples" not in wf["54"]["inputs"]
    assert {"op": "drop_input", "node": "54", "input": "samples", "was_link": ["338", 0]} in mods
    # cascade removes the consumers that cannot live without it
    graph.delete_nodes(wf, ["341"], object_info=object_info, cascade=True)
    assert not {"341", "340", "343", "344"} & set(wf)
    assert graph.dangling_links(wf) == []


def test_bypass_reroute_and_set_input(fixture_combine):
    wf = copy.deepcopy(fixture_combine)
    assert sorted(graph.find_consumers(wf, "30")) == [("14", "images", 0)]
    graph.bypass_node(wf, "30", "image_1", optional_inputs={})
    assert wf["14"]["inputs"]["images"] == ["40", 0] and "30" not in wf
    with pytest.raises(WorkflowInvalid, match="node 99"):
        graph.set_input(wf, "99", "x", 1)
    with pytest.raises(WorkflowInvalid, match="missing node 77"):
        graph.set_input(wf, "14", "images", ["77", 0])


def test_offline_validation_finds_core_problems(fixture_prompt, object_info):
    wf = copy.deepcopy(fixture_prompt)
    del wf["344"]["inputs"]["filename_prefix"]
    wf["359"]["inputs"]["images"] = ["358", 5]  # Load Image From Path is custom: slot unknown, not flagged
    wf["363"]["inputs"]["images"] = ["404", 0]
    problems = graph.validate_offline(wf, object_info)
    assert {(p["node_id"], p.get("input")) for p in problems} == {("344", "filename_prefix"), ("363", "images")}
    with pytest.raises(WorkflowInvalid) as info:
        graph.check_workflow(wf, object_info)
    assert len(info.value.details["node_errors"]) == 2


def _profile_file(tmp_path, mutate):
    data = yaml.safe_load((shipped_profiles_dir() / "wan22_vace_v2v.yaml").read_text())
    for key in ("base_workflow", "combine_workflow"):
        data[key] = str(shipped_profiles_dir() / data[key])
    mutate(data)
    p = tmp_path / "custom.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_profile_loads_from_a_path_and_names_bad_nodes(tmp_path):
    ok = load_profile(_profile_file(tmp_path, lambda d: d.update(name="custom")))
    assert ok.name == "custom" and ok.roles["frames"].node == "19"

    def bad_node(d):
        d["roles"]["frames"]["node"] = "999"

    with pytest.raises(ProfileError, match=r"roles\.frames: node 999 is not in the workflow") as info:
        load_profile(_profile_file(tmp_path, bad_node))
    assert info.value.details["node_id"] == "999" and info.value.details["role"] == "frames"

    def bad_input(d):
        d["roles"]["lora"]["input"] = "lora_name"

    with pytest.raises(ProfileError, match=r"node 309:298 \(WanVideoLoraSelect\) has no input 'lora_name'"):
        load_profile(_profile_file(tmp_path, bad_input))

    def bad_remove(d):
        d["passes"]["high"]["remove"].append("12345")

    with pytest.raises(ProfileError, match=r"passes\.high\.remove: node 12345"):
        load_profile(_profile_file(tmp_path, bad_remove))
    with pytest.raises(ProfileError, match="no shipped profile named 'nope'"):
        load_profile("nope")


def test_concat_profile_has_no_combine_workflows(tmp_path, sunset_plan):
    p = load_profile(_profile_file(tmp_path, lambda d: (d.pop("combine_workflow"), d.pop("combine_roles"))))
    assert p.join_mode == "concat"
