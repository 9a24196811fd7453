"""A prompt_runner task's params never name the worker's files: profile names (shipped or PROFILES_DIR, never a
path), input_video and overrides; and the chain's own paths (its cw_chains/<task> folder) pass the same check
that refuses task-supplied ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from comfy_worker.engine.paths import path_problems
from comfy_worker.errors import InputRejected
from comfy_worker.handlers.prompt_runner.build import build_job_workflow
from comfy_worker.handlers.prompt_runner.handler import prepare_chain
from comfy_worker.handlers.prompt_runner.planner import COMBINE, plan
from comfy_worker.handlers.prompt_runner.profile import (
    ProfileError,
    list_profiles,
    load_profile,
    load_task_profile,
    profile_names,
    resolve_task_profile,
    shipped_profiles_dir,
)
from comfy_worker.handlers.prompt_runner.prompt_file import from_params

REPO = Path(__file__).resolve().parents[3]
TEST_CHAIN = REPO / "tests" / "integration" / "prompt_runner" / "chain"


def params(**extra: object) -> dict:
    return {"video_name": "clip", "total_frames": 20, "frames_per_chunk": 9, "positive_prompt": "a cat", **extra}


# --- profile names ------------------------------------------------------------------------------------------


def test_every_shipped_profile_is_allowed_by_name() -> None:
    shipped = sorted(p.stem for p in shipped_profiles_dir().glob("*.yaml"))
    assert shipped and profile_names() == shipped == list_profiles()
    for name in shipped:  # read from the folder: a profile added there (e.g. wan22_i2v_chain) is allowed too
        assert resolve_task_profile(name) == (shipped_profiles_dir() / f"{name}.yaml").resolve()
        assert load_task_profile(name).name


@pytest.mark.parametrize(
    "value",
    [
        "/etc/passwd",
        "../../x",
        "../profiles/wan22_vace_v2v",
        str(shipped_profiles_dir() / "wan22_vace_v2v.yaml"),
        "sub/wan22_vace_v2v",
        "~root/x",
        "..",
        "wan22_vace_v2v\x00",
    ],
)
def test_a_path_is_never_a_task_profile_and_the_error_names_the_allowed_names(value: str) -> None:
    with pytest.raises(ProfileError) as err:
        resolve_task_profile(value)
    msg = str(err.value)
    assert msg.startswith("params.profile: ") and "not a profile name" in msg, msg
    assert "allowed: " + ", ".join(list_profiles()) in msg and "PROFILES_DIR" in msg
    assert err.value.details["allowed"] == list_profiles()


def test_an_unknown_name_is_refused_listing_both_folders(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text((TEST_CHAIN / "cw_test_chain.yaml").read_text())
    with pytest.raises(ProfileError) as err:
        resolve_task_profile("nope", tmp_path)
    assert "no profile named 'nope'" in str(err.value)
    assert err.value.details["allowed"] == sorted(["mine", *list_profiles()])


def test_profiles_dir_adds_names_and_wins_over_a_shipped_name(tmp_path: Path) -> None:
    shutil.copytree(TEST_CHAIN, tmp_path / "profiles")
    pdir = tmp_path / "profiles"
    assert {"cw_test_chain", "cw_test_chain_combine"} <= set(profile_names(pdir))
    assert load_task_profile("cw_test_chain", pdir).name == "cw_test_chain"
    assert load_task_profile("cw_test_chain.yaml", pdir).name == "cw_test_chain"
    (pdir / "wan22_vace_v2v.yaml").write_text((pdir / "cw_test_chain.yaml").read_text())
    assert resolve_task_profile("wan22_vace_v2v", pdir) == (pdir / "wan22_vace_v2v.yaml").resolve()


def test_a_symlink_out_of_profiles_dir_is_refused(tmp_path: Path) -> None:
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    outside = tmp_path / "elsewhere"
    shutil.copytree(TEST_CHAIN, outside)
    (pdir / "sneaky.yaml").symlink_to(outside / "cw_test_chain.yaml")
    with pytest.raises(ProfileError, match=r"leads out of .* through a symlink"):
        resolve_task_profile("sneaky", pdir)


def test_a_named_profile_may_not_pull_workflows_from_elsewhere(tmp_path: Path) -> None:
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    text = (TEST_CHAIN / "cw_test_chain.yaml").read_text()
    for ref in (str(TEST_CHAIN / "cw_test_chain.json"), "../cw_test_chain.json"):
        shutil.copy(TEST_CHAIN / "cw_test_chain.json", tmp_path / "cw_test_chain.json")
        (pdir / "p.yaml").write_text(text.replace("base_workflow: cw_test_chain.json", f"base_workflow: {ref}"))
        with pytest.raises(ProfileError, match="must be a file next to the profile"):
            load_task_profile("p", pdir)
    assert load_profile(pdir / "p.yaml").name == "cw_test_chain"  # an operator's local run may


def test_a_task_spec_with_a_profile_path_fails_in_prepare_but_a_local_run_may_use_it() -> None:
    spec = from_params(params(profile=str(TEST_CHAIN / "cw_test_chain.yaml")))
    with pytest.raises(ProfileError, match="not a profile name"):
        prepare_chain(spec, None, task=True)
    profile, state, _ = prepare_chain(spec, None)
    assert profile.name == "cw_test_chain" and state.plan.chunks == 3


# --- input_video and overrides ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["/etc/passwd", "../../secret.mp4", "a/../../b.mp4", "~/v.mp4"])
def test_input_video_outside_the_input_folder_is_refused(value: str) -> None:
    with pytest.raises(InputRejected) as err:
        prepare_chain(from_params(params(input_video=value)), None, task=True)
    assert "field 'input_video'" in str(err.value) and "input folder" in str(err.value)


def test_input_video_inside_the_input_folder_passes() -> None:
    prepare_chain(from_params(params(input_video="motion/source.mp4")), None, task=True)


@pytest.mark.parametrize(
    ("node_input", "value", "expect"),
    [
        (("358", "image_path"), "/etc/passwd", "names a file by path"),
        (("365", "folder_path"), "/root/.ssh", "names a file by path"),
        (("338", "folder_path"), "http://10.0.0.1/x", "names a file by path"),
        (("340", "filename_prefix"), "../../../../tmp/x", "'..' segment"),
        (("344", "filename_prefix"), "/tmp/x", "absolute path"),
        (("149", "video"), "/etc/passwd", "absolute path"),
        (("365", "subfolder_name"), "../..", "'..' segment"),
    ],
)
def test_overrides_of_file_inputs_are_refused_naming_the_field(
    node_input: tuple[str, str], value: str, expect: str
) -> None:
    node_id, name = node_input
    spec = from_params(params(overrides={"nodes": {node_id: {name: value}}}))
    with pytest.raises(InputRejected) as err:
        prepare_chain(spec, None, task=True)
    msg = str(err.value)
    assert f"field 'overrides.nodes.{node_id}.{name}'" in msg and expect in msg, msg


def test_overrides_of_other_inputs_still_work() -> None:
    spec = from_params(params(overrides={"nodes": {"54": {"steps": 8}, "340": {"filename_prefix": "clips/x"}}}))
    _, _, overrides = prepare_chain(spec, None, task=True)
    assert overrides["nodes"]["54"] == {"steps": 8}


# --- the chain's own paths pass ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile_name", ["wan22_vace_v2v", "cw_test_chain", "cw_test_chain_combine"])
def test_every_step_of_a_chain_passes_the_check_against_its_own_folder(
    profile_name: str, object_info: dict, tmp_path: Path
) -> None:
    profile = load_task_profile(profile_name, TEST_CHAIN)
    files_root = tmp_path / "output" / "cw_chains" / "task-1"
    spec = from_params(params(total_frames=30, input_video="source.mp4"))
    chain = plan(spec, frames_per_chunk=9, join_mode=profile.join_mode)
    checked = 0
    for job in chain.jobs:
        if job.job_type == COMBINE and profile.combine_workflow is None:
            continue
        wf, _ = build_job_workflow(profile, job, input_video="source.mp4", comfy_output_dir=str(files_root))
        trusted = profile.combine_workflow if job.job_type == COMBINE else profile.base_workflow
        assert path_problems(wf, object_info, roots=[files_root], trusted=trusted, fetched_urls=False) == [], job
        # the same workflow pointed at another task's folder is refused
        other, _ = build_job_workflow(profile, job, comfy_output_dir=str(tmp_path / "output" / "cw_chains" / "t2"))
        if job.reference_image_path or job.latent_input_path or job.job_type == COMBINE:
            assert path_problems(other, object_info, roots=[files_root], trusted=trusted, fetched_urls=False)
        checked += 1
    assert checked >= 6
