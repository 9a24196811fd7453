"""The manifest format, and docker/models.yaml against what the shipped profiles and the official Comfy-Org
Wan 2.2 templates (PyPI comfyui-workflow-templates-json) actually load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfy_worker.config import load_settings
from comfy_worker.errors import ManifestInvalid
from comfy_worker.models_manifest import HubSource, UrlSource, load_manifest, startup_report
from comfy_worker.models_manifest.manifest import parse_manifest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "docker" / "models.yaml"
PROFILES = REPO / "comfy_worker" / "profiles"
MODEL_EXTENSIONS = (".safetensors", ".gguf", ".pth", ".pt", ".ckpt", ".bin")
# The builders' task types and the official template each one is built from.
TEMPLATES = {
    "comfyui_i2v": "video_wan2_2_14B_i2v",
    "comfyui_t2v": "video_wan2_2_14B_t2v",
    "comfyui_ti2v": "video_wan2_2_5B_ti2v",
    "comfyui_s2v": "video_wan2_2_14B_s2v",
    "comfyui_flf2v": "video_wan2_2_14B_flf2v",
}
GOOD = {"name": "v.safetensors", "folder": "vae", "url": "https://example.org/v.safetensors"}


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"name": "sub/v.safetensors"}, "'name' must be a file name without slashes"),
        ({"folder": "../etc"}, "'folder' must be a relative folder"),
        ({"sha256": "abc"}, "'sha256' must be 64 hex digits or null"),
        ({"size": -1}, "'size' must be a positive number of bytes"),
        ({"url": "ftp://x"}, "'url' must be an http(s) URL"),
        ({"hub": {"repo": "a/b", "file": "f"}}, "either 'hub' or 'url', not both"),
        ({"groups": "i2v"}, "'groups' must be a list"),
        ({"sha": "x"}, "unknown field(s) sha"),
    ],
)
def test_every_bad_field_is_named_with_the_entry(change: dict[str, Any], text: str) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest({"models": [{**GOOD, **change}]}, Path("m.yaml"))
    assert "m.yaml: models[0]" in str(info.value) and text in str(info.value)


def test_hub_entries_need_owner_and_name_and_files_are_listed_once() -> None:
    with pytest.raises(ManifestInvalid, match=r"hub.repo must be 'owner/name'"):
        parse_manifest({"models": [{"name": "a", "folder": "vae", "hub": {"repo": "x", "file": "a"}}]}, Path("m"))
    with pytest.raises(ManifestInvalid, match=r"models\[1\] \(vae/v.safetensors\) repeats models\[0\]"):
        parse_manifest({"models": [GOOD, GOOD]}, Path("m"))


def test_selecting_an_unknown_group_names_the_known_ones() -> None:
    m = parse_manifest({"models": [{**GOOD, "groups": ["comfyui_i2v"]}]}, Path("m"))
    assert [e.name for e in m.select(["comfyui_i2v"])] == ["v.safetensors"]
    assert [e.name for e in m.select([])] == ["v.safetensors"]
    with pytest.raises(ManifestInvalid, match=r"unknown group\(s\) i2v; the manifest has: comfyui_i2v"):
        m.select(["i2v"])


# --- the shipped manifest -------------------------------------------------------------------------------------


def template_models(name: str) -> set[tuple[str, str, str]]:
    """(file name, folder, url) of every model an official template's nodes declare."""
    import comfyui_workflow_templates_json

    path = Path(comfyui_workflow_templates_json.__file__).parent / "templates" / f"{name}.json"
    wf = json.loads(path.read_text())
    nodes = list(wf.get("nodes", []))
    for sub in (wf.get("definitions") or {}).get("subgraphs") or []:
        nodes += sub.get("nodes", [])
    return {
        (m["name"], m["directory"], m["url"]) for n in nodes for m in (n.get("properties") or {}).get("models") or []
    }


@pytest.mark.parametrize("group", sorted(TEMPLATES))
def test_the_manifest_has_every_model_of_the_official_template(group: str) -> None:
    manifest = load_manifest(SHIPPED)
    in_group = {e.relpath: e for e in manifest.select([group])}
    wanted = template_models(TEMPLATES[group])
    assert wanted, f"template {TEMPLATES[group]} lists no models: the templates package changed"
    for name, folder, url in wanted:
        entry = in_group.get(f"{folder}/{name}")
        assert entry is not None, f"{folder}/{name} ({TEMPLATES[group]}) is missing from group {group}"
        assert isinstance(entry.source, HubSource)
        assert url == f"https://huggingface.co/{entry.source.repo}/resolve/main/{entry.source.file}"
    assert {e.relpath for e in in_group.values()} == {f"{f}/{n}" for n, f, _ in wanted}, "nothing extra"


def profile_model_names() -> set[str]:
    names: set[str] = set()
    for wf in PROFILES.glob("wan22_vace_v2v.*.json"):
        for node in json.loads(wf.read_text()).values():
            for value in node.get("inputs", {}).values():
                if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS):
                    names.add(value)
    profile = yaml.safe_load((PROFILES / "wan22_vace_v2v.yaml").read_text())
    for p in profile["passes"].values():
        names |= {p["model"], p["lora"]}
    return names


def test_the_manifest_has_every_model_the_vace_profile_loads() -> None:
    manifest = load_manifest(SHIPPED)
    listed = {e.name for e in manifest.select(["prompt_runner"])}
    # fetched by their node packs on first use (see the manifest's header)
    self_fetched = {"depth_anything_v2_vitl.pth", "rife49.pth"}
    assert profile_model_names() - self_fetched <= listed
    assert profile_model_names() & self_fetched == self_fetched, "the profile changed: update the manifest header"


def test_shipped_hashes_are_only_on_hub_files_and_urls_are_https() -> None:
    for e in load_manifest(SHIPPED).entries:
        if isinstance(e.source, UrlSource):
            assert e.source.url.startswith("https://")
        if e.source is None:
            assert e.sha256 is None and "copy it in" in e.note


# --- the heartbeat report -------------------------------------------------------------------------------------


def test_startup_report_lists_missing_and_wrong_size_files_by_path(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {**GOOD, "groups": ["a"], "size": 3},
                    {"name": "l.safetensors", "folder": "loras", "groups": ["a"]},
                    {"name": "x.safetensors", "folder": "vae", "groups": ["b"]},
                ]
            }
        )
    )
    (tmp_path / "models" / "vae").mkdir(parents=True)
    (tmp_path / "models" / "vae" / "v.safetensors").write_bytes(b"12")
    env = {"MODELS_MANIFEST": str(manifest), "MODELS_DIR": str(tmp_path / "models"), "MODELS_GROUPS": "a"}
    assert startup_report(load_settings(env, dotenv=None)) == {
        "models_missing": ["loras/l.safetensors"],
        "models_corrupt": ["vae/v.safetensors"],
    }
    assert startup_report(load_settings({}, dotenv=None)) == {}
    bad = startup_report(load_settings({**env, "MODELS_MANIFEST": str(tmp_path / "nope.yaml")}, dotenv=None))
    assert "cannot read model manifest" in bad["models_error"]


def test_a_task_naming_a_missing_model_says_how_to_fetch_it() -> None:
    from comfy_worker.engine.workflow import problems

    info = {
        "UNETLoader": {
            "input": {"required": {"unet_name": [["wan2.2_ti2v_5B_fp16.safetensors"], {}]}},
            "output": ["MODEL"],
        }
    }
    wf = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"}}
    }
    [found] = problems(wf, info)
    assert "model wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors is not installed" in found["message"]
    assert found["message"].endswith("comfy-worker models sync")


def test_every_wan2gp_task_type_has_a_group_with_its_model_in_wan2gps_folders() -> None:
    """docker/models.yaml's wan2gp_<type> groups: one per task type worker_wgp serves, each naming at least one
    transformer file under MODELS_DIR/wan2gp (the image's Wan2GP ckpts/) from DeepBeepMeep's repositories."""
    pytest.importorskip("worker_wgp")
    from worker_wgp.tasks import TASK_TYPES

    m = load_manifest(SHIPPED)
    for task_type in TASK_TYPES:
        entries = m.select([f"wan2gp_{task_type}"])
        models = [e for e in entries if e.folder == "wan2gp" and e.name.endswith(".safetensors")]
        assert models, task_type
        assert all(isinstance(e.source, HubSource) and e.source.repo.startswith("DeepBeepMeep/") for e in models)
    core = m.select(["wan2gp_core"])
    assert {e.folder for e in core} >= {"wan2gp/pose", "wan2gp/depth", "wan2gp/mask"}
    assert all(e.folder.startswith(("wan2gp", "loras/wan2gp")) for e in m.entries if any(
        g.startswith("wan2gp_") for g in e.groups))
