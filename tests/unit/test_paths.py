"""Task values that name files: comfy_worker.pathsafe (task ids, relative names) and comfy_worker.engine.paths
(workflow file inputs), against ComfyUI 0.3.64's /object_info (tests/fixtures) and real folders with symlinks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from comfy_worker.engine.paths import (
    INPUT_FOLDER_INPUTS,
    OUTPUT_NAME_INPUTS,
    path_problems,
    refuse_unsafe_paths,
)
from comfy_worker.errors import InputRejected
from comfy_worker.pathsafe import contained, path_key, relative_problem
from tests.fixture_files import OBJECT_INFO_0364


@pytest.fixture(scope="module")
def info() -> dict:
    return json.loads(OBJECT_INFO_0364.read_text())


def node(class_type: str, **inputs: object) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def one(class_type: str, **inputs: object) -> dict:
    return {"7": node(class_type, **inputs)}


# --- pathsafe ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", ["0b8a4f5e-93c1-4c7e-8a1e-5d2f6c7b9a10", "render-42", "A.b_c"])
def test_ordinary_task_ids_are_their_own_key(task_id: str) -> None:
    assert path_key(task_id) == task_id


@pytest.mark.parametrize(
    "task_id",
    ["../../etc", "/etc/cron.d/x", "a/b", "..", ".hidden", "-rf", "x" * 200, "über", "a\nb", "", "a..b", "C:\\x"],
)
def test_any_other_task_id_becomes_one_safe_component(task_id: str) -> None:
    key = path_key(task_id)
    assert relative_problem(key) is None and "/" not in key and ".." not in key
    assert not key.startswith((".", "-")) and len(key) <= 65
    assert "+" in key  # never equal to an id that is its own key
    assert path_key(task_id) == key  # stable: another machine resuming the task finds the same folders


def test_different_task_ids_never_share_a_key() -> None:
    ids = ["a/b", "a_b", "a b", "a:b", "a/b/", "../a_b", "a_b+" + "0" * 16]
    keys = [path_key(i) for i in ids]
    assert len(set(keys)) == len(ids)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("/etc/passwd", "absolute"),
        ("C:/Windows/win.ini", "absolute"),
        ("..", "'..'"),
        ("a/../../b", "'..'"),
        ("a\\..\\b", "backslash"),
        ("~/secrets", "'~'"),
        ("a\x00b", "control"),
        ("", "empty"),
    ],
)
def test_relative_problem_names_what_is_wrong(value: str, problem: str) -> None:
    assert problem in (relative_problem(value) or "")


def test_contained_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    assert contained(root / "sub" / "new.png", [root]) == root.resolve()
    assert contained(root / "escape" / "x", [root]) is None
    assert contained(root / "sub" / ".." / ".." / "outside", [root]) is None


# --- loader inputs: the input folder ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_type", "field", "value", "expect"),
    [
        ("LoadImage", "image", "/etc/passwd", "is an absolute path"),
        ("LoadImage", "image", "../../../etc/passwd", "'..' segment"),
        ("LoadImage", "image", "pics/../../x.png", "'..' segment"),
        ("LoadImageMask", "image", "~/.ssh/id_rsa", "'~'"),
        ("LoadImage", "image", "comfy_worker/other-task/in.png", "other tasks' uploads"),
        ("LoadImage", "image", "result_00001_.png [output]", "shared output folder"),
        ("LoadImageOutput", "image", "x.png [output]", "shared output folder"),
        ("LoadImage", "image", "preview.png [temp]", "shared temp folder"),
        ("LoadAudio", "audio", "/root/a.wav", "is an absolute path"),
        ("LoadVideo", "file", "C:\\videos\\a.mp4", "is an absolute path"),
        ("LoadLatent", "latent", "../x.latent", "'..' segment"),
        ("Load3D", "model_file", "/srv/model.glb", "is an absolute path"),
        ("OpenAIInputFiles", "file", "../secrets.txt", "'..' segment"),
        ("VHS_LoadVideo", "video", "/etc/shadow", "is an absolute path"),
        ("VHS_LoadVideoFFmpeg", "video", "../a.mp4", "'..' segment"),
        ("VHS_LoadAudioUpload", "audio", "/a.wav", "is an absolute path"),
        ("VHS_LoadImages", "directory", "../../", "'..' segment"),
        ("CWLoadVideo", "video", "/etc/passwd", "is an absolute path"),
    ],
)
def test_loader_file_inputs_that_leave_the_input_folder_are_refused(
    info: dict, class_type: str, field: str, value: str, expect: str
) -> None:
    with pytest.raises(InputRejected) as err:
        refuse_unsafe_paths(one(class_type, **{field: value}), info)
    msg = str(err.value)
    assert f"node 7 ({class_type}) input '{field}'" in msg and repr(value) in msg and expect in msg, msg
    assert "URL or a params.inputs entry" in msg  # the fix
    (problem,) = err.value.details["problems"]
    assert (problem["node_id"], problem["input"], problem["value"]) == ("7", field, value)


@pytest.mark.parametrize(
    "value", ["example.png", "sub/dir/a.png", "a.png [input]", "https://example.com/a.png", "my file (1).png"]
)
def test_names_inside_the_input_folder_and_fetched_urls_pass(info: dict, value: str) -> None:
    assert path_problems(one("LoadImage", image=value), info) == []


def test_urls_are_refused_where_the_caller_does_not_fetch_them(info: dict) -> None:
    (p,) = path_problems(one("LoadImage", image="http://10.0.0.1/a.png"), info, fetched_urls=False)
    assert "does not fetch" in p["message"]
    # Preview3D is not one of the loaders whose URLs the comfy handler fetches: it would get the URL as is
    (p,) = path_problems(one("Preview3D", model_file="http://10.0.0.1/a.glb"), info)
    assert "does not fetch" in p["message"]


def test_an_upload_flag_in_object_info_marks_a_custom_loader(info: dict) -> None:
    custom = {"MyLoader": {"input": {"required": {"pic": [["a.png"], {"image_upload": True}]}}, "output": []}}
    assert path_problems(one("MyLoader", pic="/etc/passwd"), {**info, **custom})
    assert path_problems(one("MyLoader", pic="/etc/passwd"), info) == []  # unknown and unflagged: not a file input


def test_symlinks_out_of_the_input_folder_are_refused(info: dict, tmp_path: Path) -> None:
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    (input_dir / "ok.png").write_bytes(b"png")
    (input_dir / "etc").symlink_to("/etc")
    (input_dir / "inside").symlink_to(input_dir / "ok.png")
    (p,) = path_problems(one("LoadImage", image="etc/passwd"), info, input_dir=input_dir)
    assert "through a symlink" in p["message"]
    assert path_problems(one("LoadImage", image="ok.png"), info, input_dir=input_dir) == []
    assert path_problems(one("LoadImage", image="inside"), info, input_dir=input_dir) == []
    assert path_problems(one("LoadImage", image="not-there-yet.png"), info, input_dir=input_dir) == []


def test_inputs_the_worker_replaces_and_links_are_not_checked(info: dict) -> None:
    wf = {
        "1": node("LoadImage", image="/etc/passwd"),  # params.inputs sets this one
        "2": node("ImageInvert", image=["1", 0]),
    }
    assert path_problems(wf, info, replaced=[("1", "image")]) == []
    assert len(path_problems(wf, info)) == 1


def test_every_problem_is_listed_at_once(info: dict) -> None:
    wf = {
        "1": node("LoadImage", image="/etc/passwd"),
        "2": node("SaveImage", images=["1", 0], filename_prefix="../../x"),
        "3": node("VHS_LoadVideoPath", video="/home/user/v.mp4"),
    }
    with pytest.raises(InputRejected) as err:
        refuse_unsafe_paths(wf, info)
    assert "3 problem(s)" in str(err.value)
    assert [p["node_id"] for p in err.value.details["problems"]] == ["1", "2", "3"]


# --- path inputs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_type", "field"),
    [
        ("VHS_LoadVideoPath", "video"),
        ("VHS_LoadVideoFFmpegPath", "video"),
        ("VHS_LoadImagePath", "image"),
        ("VHS_LoadImagesPath", "directory"),
        ("VHS_LoadAudio", "audio_file"),
        ("Load Image From Path [DVB]", "image_path"),
        ("LoadLastLatent", "folder_path"),
        ("SaveLatentWithPath", "folder_path"),
        ("CWLoadImageFromPath", "image_path"),
        ("CWSaveLatentWithPath", "folder_path"),
    ],
)
def test_a_comfy_task_may_not_name_paths_on_the_worker(info: dict, class_type: str, field: str) -> None:
    for value in ("/etc/passwd", "input/a.mp4", "../../x"):
        (p,) = path_problems(one(class_type, **{field: value}), info)
        assert "names a file on the worker by path" in p["message"] and "upload loader" in p["message"]


def test_a_path_input_with_a_url_is_refused_because_the_node_would_fetch_it(info: dict) -> None:
    (p,) = path_problems(one("VHS_LoadVideoPath", video="http://169.254.169.254/latest"), info)
    assert "private-address" in p["message"]


def test_path_inputs_under_the_allowed_root_pass_and_nothing_else(info: dict, tmp_path: Path) -> None:
    root = tmp_path / "cw_chains" / "task-1"
    (root / "v" / "references").mkdir(parents=True)
    (root / "v" / "escape").symlink_to(tmp_path)
    ok = str(root / "v" / "references" / "ref.png")
    assert path_problems(one("Load Image From Path [DVB]", image_path=ok), info, roots=[root]) == []
    bad = {
        "other task": str(tmp_path / "cw_chains" / "task-2" / "v" / "ref.png"),
        "dot-dot": f"{root}/../task-2/v/ref.png",
        "relative": "cw_chains/task-1/v/ref.png",
        "symlink": str(root / "v" / "escape" / "secret"),
    }
    for why, value in bad.items():
        found = path_problems(one("Load Image From Path [DVB]", image_path=value), info, roots=[root])
        assert len(found) == 1, why


def test_values_the_operator_wrote_in_a_trusted_workflow_pass(info: dict) -> None:
    profile_wf = one("VHS_LoadAudio", audio_file="/workspace/music/theme.wav")
    assert path_problems(profile_wf, info, trusted=profile_wf) == []
    changed = one("VHS_LoadAudio", audio_file="/etc/passwd")
    assert len(path_problems(changed, info, trusted=profile_wf)) == 1


# --- output names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_type", "field"),
    [
        ("SaveImage", "filename_prefix"),
        ("SaveVideo", "filename_prefix"),
        ("VHS_VideoCombine", "filename_prefix"),
        ("SomeCustomSaver", "filename_prefix"),
        ("SaveLoRANode", "prefix"),
        ("SaveLatentWithPath", "subfolder_name"),
        ("CWSaveLatentWithPath", "filename"),
    ],
)
def test_output_names_must_stay_in_the_output_folder(info: dict, class_type: str, field: str) -> None:
    for value in ("../../../tmp/x", "/tmp/x", "a/../../b"):
        (p,) = path_problems(one(class_type, **{field: value}), info)
        assert "relative to ComfyUI's output folder" in p["message"], p
    assert path_problems(one(class_type, **{field: "video/clip_01"}), info) == []


def test_the_tables_name_inputs_that_exist_on_core_nodes(info: dict) -> None:
    for class_type, field in INPUT_FOLDER_INPUTS | OUTPUT_NAME_INPUTS:
        if class_type in info:
            sections = info[class_type]["input"]
            declared = {**sections.get("required", {}), **sections.get("optional", {})}
            assert field in declared, (class_type, field)


def test_symlink_check_uses_the_real_folder_not_the_text(info: dict, tmp_path: Path) -> None:
    # the input folder itself may be a symlink (a mounted volume): names inside it still pass
    real = tmp_path / "volume"
    real.mkdir()
    (tmp_path / "input").symlink_to(real)
    assert path_problems(one("LoadImage", image="a.png"), info, input_dir=tmp_path / "input") == []
    assert os.path.islink(tmp_path / "input")
