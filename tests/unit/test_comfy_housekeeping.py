"""ComfyUI's folders as the worker sees them, per-task output prefixes, and the sweep of ComfyUI's folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfy_worker.config import load_settings
from comfy_worker.engine.housekeeping import ComfyFolders, ComfyHousekeeper, comfy_folders
from comfy_worker.engine.scoped import prefix_outputs, task_subfolder
from comfy_worker.errors import ConfigError


def test_launched_comfyui_folders_follow_comfy_path_and_comfy_args(tmp_path: Path) -> None:
    root = tmp_path / "ComfyUI"
    plain = comfy_folders(load_settings({"COMFY_PATH": str(root)}))
    assert plain == ComfyFolders(root / "input", root / "output", root / "temp")
    args = f"--cpu --input-directory {tmp_path}/in --output-directory=rel/out --temp-directory {tmp_path}/scratch"
    moved = comfy_folders(load_settings({"COMFY_PATH": str(root), "COMFY_ARGS": args}))
    assert moved == ComfyFolders(tmp_path / "in", root / "rel" / "out", tmp_path / "scratch" / "temp")
    based = comfy_folders(load_settings({"COMFY_PATH": str(root), "COMFY_ARGS": f"--base-directory {tmp_path}/b"}))
    assert based == ComfyFolders(tmp_path / "b" / "input", tmp_path / "b" / "output", tmp_path / "b" / "temp")
    (tmp_path / "mine").mkdir()
    explicit = comfy_folders(load_settings({"COMFY_PATH": str(root), "COMFY_OUTPUT_DIR": str(tmp_path / "mine")}))
    assert explicit.output == tmp_path / "mine" and explicit.input == root / "input"


def test_attached_comfyui_knows_only_the_folders_it_is_given(tmp_path: Path) -> None:
    assert comfy_folders(load_settings({"COMFY_URL": "http://127.0.0.1:8188"})).known == []
    (tmp_path / "in").mkdir()
    env = {"COMFY_URL": "http://127.0.0.1:8188", "COMFY_INPUT_DIR": str(tmp_path / "in")}
    folders = comfy_folders(load_settings(env))
    assert folders == ComfyFolders(input=tmp_path / "in")


@pytest.mark.parametrize("variable", ["COMFY_INPUT_DIR", "COMFY_OUTPUT_DIR", "COMFY_TEMP_DIR"])
def test_a_folder_that_does_not_exist_names_the_variable(tmp_path: Path, variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        comfy_folders(load_settings({"COMFY_URL": "http://127.0.0.1:8188", variable: str(tmp_path / "no" / "pe")}))
    assert info.value.variable == variable and str(tmp_path / "no" / "pe") in str(info.value)


def test_a_temp_folder_comfyui_has_not_made_yet_is_accepted(tmp_path: Path) -> None:
    # ComfyUI removes its temp folder at start and exit, and makes it again when a node first writes there
    env = {"COMFY_URL": "http://127.0.0.1:8188", "COMFY_TEMP_DIR": str(tmp_path / "temp")}
    assert comfy_folders(load_settings(env)).temp == tmp_path / "temp"


@pytest.mark.parametrize(
    ("env", "text"),
    [({"MIN_FREE_DISK_GB": "-1"}, "must be >= 0"), ({"KEEP_COMFY_FILES": "sometimes"}, "expected true or false")],
)
def test_bad_upkeep_settings_name_the_variable(env: dict[str, str], text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.variable == next(iter(env)) and text in str(info.value)


def test_every_literal_filename_prefix_goes_under_the_task_prefix() -> None:
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "img"}},
        "3": {"class_type": "SaveLatent", "inputs": {"filename_prefix": "latents/lat"}},
        "4": {"class_type": "VHS_VideoCombine", "inputs": {"filename_prefix": ["9", 0]}},  # a link: left alone
        "5": {"class_type": "SaveAnimatedWEBP", "inputs": {"filename_prefix": ""}},
        # a chain's own latent, saved exactly where its LOW step loads it (inside the task's folder)
        "6": {"class_type": "SaveLatent", "inputs": {"filename_prefix": "/out/comfy_worker/t1/chain/latents/c1"}},
    }
    assert prefix_outputs(workflow, "comfy_worker/t1/1-0") == 3
    assert workflow["2"]["inputs"]["filename_prefix"] == "comfy_worker/t1/1-0/img"
    assert workflow["3"]["inputs"]["filename_prefix"] == "comfy_worker/t1/1-0/latents/lat"
    assert workflow["4"]["inputs"]["filename_prefix"] == ["9", 0]
    assert workflow["5"]["inputs"]["filename_prefix"] == "comfy_worker/t1/1-0/ComfyUI"
    assert workflow["6"]["inputs"]["filename_prefix"] == "/out/comfy_worker/t1/chain/latents/c1"
    assert task_subfolder("t1") == "comfy_worker/t1"
    assert task_subfolder("../x").count("/") == 1 and ".." not in task_subfolder("../x")  # a task id is user text


def test_sweep_removes_orphans_of_any_folder_but_nothing_outside_the_task_folders(tmp_path: Path) -> None:
    folders = ComfyFolders(tmp_path / "input", tmp_path / "output", tmp_path / "temp")

    def put(rel: str, age_s: float) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
        t = os.path.getmtime(path) - age_s
        for p in [path, *path.relative_to(tmp_path).parents]:
            os.utime(tmp_path / p, (t, t))
        return path

    now = put("input/comfy_worker/crashed/a.png", 7200).stat().st_mtime + 7200
    put("output/comfy_worker/crashed/1-0/img_00001_.png", 7200)
    put("output/comfy_worker/running/1-0/img_00001_.png", 7200)
    put("output/comfy_worker/fresh/1-0/img_00001_.png", 10)
    put("output/someones_render_00001_.png", 7200)  # not ours: never touched
    put("temp/ComfyUI_temp_abcd_00001_.png", 7200)  # ComfyUI's scratch: swept when old
    put("temp/ComfyUI_temp_efgh_00001_.png", 10)
    removed = ComfyHousekeeper(None, folders).sweep({"running"}, 3600, now)  # type: ignore[arg-type]
    assert removed.files == 3 and removed.bytes == 30
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [
        "output/comfy_worker/fresh/1-0/img_00001_.png",
        "output/comfy_worker/running/1-0/img_00001_.png",
        "output/someones_render_00001_.png",
        "temp/ComfyUI_temp_efgh_00001_.png",
    ]
    assert ComfyHousekeeper(None, folders).folder_bytes() == {"input": 0, "output": 30, "temp": 10}  # type: ignore[arg-type]
