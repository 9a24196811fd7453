"""Where a chain's plan settings come from (flag > prompt file / task params > profile defaults > built-in), and
what the dry run shows of them: per chunk the frames rendered (Wan's 4k+1) and the frames kept."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from pathlib import Path

import pytest
import yaml

from comfy_worker.config import load_settings
from comfy_worker.handlers.prompt_runner import cli, local
from comfy_worker.handlers.prompt_runner.dryrun import plan_for, plan_settings
from comfy_worker.handlers.prompt_runner.executor import ChainOptions
from comfy_worker.handlers.prompt_runner.handler import prepare_chain, split_params
from comfy_worker.handlers.prompt_runner.planner import LOW
from comfy_worker.handlers.prompt_runner.profile import ProfileError, load_profile, shipped_profiles_dir
from comfy_worker.handlers.prompt_runner.prompt_file import parse_text


def write_profile(folder: Path, name: str, **defaults: object) -> Path:
    """The shipped VACE profile under another name with other defaults (``None`` removes a key)."""
    data = yaml.safe_load((shipped_profiles_dir() / "wan22_vace_v2v.yaml").read_text())
    data["name"] = name
    for key in ("base_workflow", "combine_workflow"):  # next to the profile, as a task's profile must have them
        shutil.copyfile(shipped_profiles_dir() / data[key], folder / data[key])
    for key, value in defaults.items():
        if value is None:
            data["defaults"].pop(key, None)
        else:
            data["defaults"][key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def prompt(folder: Path, total: int, fpc: int | None = None) -> Path:
    setting = f"\nframes_per_chunk: {fpc}" if fpc is not None else ""
    path = folder / "clip.txt"
    path.write_text(f"clip\n\n{total}{setting}\n\na red kite over a beach\n\nblurry\n", encoding="utf-8")
    return path


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return asyncio.run(cli.run_cli(parser.parse_args(argv), load_settings(dotenv=None)))


@pytest.mark.parametrize(
    ("profile_fpc", "file_fpc", "flag", "expected", "source"),
    [
        (None, None, None, 101, "built-in"),
        (45, None, None, 45, "profile p defaults"),
        (45, 33, None, 33, "prompt file"),
        (45, 33, 21, 21, "command line"),
        (45, None, 21, 21, "command line"),
        (None, 33, None, 33, "prompt file"),
    ],
)
def test_dry_run_frames_per_chunk_flag_beats_prompt_file_beats_profile_beats_built_in(
    tmp_path, monkeypatch, capsys, profile_fpc, file_fpc, flag, expected, source
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRY_RUN_TEMP_DIR", str(tmp_path / "dry"))
    profile = write_profile(tmp_path, "p", frames_per_chunk=profile_fpc)
    argv = ["--dry-run", "--prompt-file", str(prompt(tmp_path, 200, file_fpc)), "--profile", str(profile)]
    argv += ["--frames-per-chunk", str(flag)] if flag else []
    assert run([*argv, "--log-level", "error"]) == 0
    state = json.loads((tmp_path / "dry" / "state" / "clip.json").read_text())
    assert state["plan"]["frames_per_chunk"] == expected
    assert state["plan"]["chunks"] == -(-200 // expected)
    [render] = (tmp_path / "dry" / "render_jobs").glob("*.json")
    metadata = json.loads(render.read_text())["metadata"]
    assert metadata["frames_per_chunk"] == expected and metadata["settings_from"]["frames_per_chunk"] == source
    assert f"chunks of <= {expected} (frames_per_chunk from {source};" in capsys.readouterr().out


def test_shipped_i2v_profile_default_is_honoured():
    """wan22_i2v_chain sets defaults.frames_per_chunk 81 (Wan 2.2's window): a prompt file without one gets it."""
    spec = parse_text("clip\n\n200\n\npos\n\nneg\n")
    p = plan_for(spec, load_profile("wan22_i2v_chain"))
    assert p.frames_per_chunk == 81 and p.chunks == 3
    assert plan_for(spec, load_profile("wan22_i2v_chain"), frames_per_chunk=41).frames_per_chunk == 41
    settings = plan_settings(spec, load_profile("wan22_i2v_chain"))
    assert settings["frames_per_chunk"] == (81, "profile wan22_i2v_chain defaults")
    assert settings["reference_offset"] == (1, "profile wan22_i2v_chain defaults")


def test_task_params_beat_the_profile_default_and_the_profile_default_beats_built_in(tmp_path):
    write_profile(tmp_path, "mine", frames_per_chunk=49, reference_offset=3)
    base = {"video_name": "v", "total_frames": 150, "positive_prompt": "a cat", "profile": "mine"}
    for params, fpc in ((base, 49), ({**base, "frames_per_chunk": 25}, 25), ({**base, "frames_per_chunk": None}, 49)):
        spec, _run = split_params(params)
        _profile, state, _ov = prepare_chain(spec, None, task=True, profiles_dir=tmp_path)
        assert state.plan.frames_per_chunk == fpc, params
        assert state.plan.reference_offset == 3
    spec, _ = split_params({**base, "overrides": {"reference_offset": 5}})
    _profile, state, _ov = prepare_chain(spec, None, task=True, profiles_dir=tmp_path)
    assert state.plan.reference_offset == 5  # a task's overrides beat the profile's defaults


def test_submit_sends_frames_per_chunk_only_when_the_flag_or_the_file_sets_it(tmp_path):
    args = argparse.Namespace(frames_per_chunk=None, max_retries=3, keep_intermediate=False, profile=None,
                              overlap=None, reference_offset=None)  # fmt: skip
    without = parse_text("clip\n\n200\n\npos\n\nneg\n")
    with_file = parse_text("clip\n\n200\nframes_per_chunk: 33\n\npos\n\nneg\n")
    assert "frames_per_chunk" not in local.task_params(without, args)  # the worker's profile decides
    assert local.task_params(with_file, args)["frames_per_chunk"] == 33
    args.frames_per_chunk = 21
    assert local.task_params(with_file, args)["frames_per_chunk"] == 21
    assert local.default_profile(with_file, args).frames_per_chunk == 21  # what a local run plans (and resumes)
    args.frames_per_chunk = None
    assert local.default_profile(without, args).frames_per_chunk is None
    assert split_params(local.task_params(without, args))[0].frames_per_chunk is None


def test_dry_run_shows_frames_rendered_and_kept(tmp_path, monkeypatch, capsys):
    """500 frames in chunks of 101: the last chunk covers 96 frames, renders 97 (4k+1), keeps 96."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRY_RUN_TEMP_DIR", str(tmp_path / "dry"))
    assert run(["--dry-run", "--prompt-file", str(prompt(tmp_path, 500)), "--log-level", "error"]) == 0
    out = capsys.readouterr().out
    assert "frames 0-100 render 101 keep 101" in out
    assert "frames 404-499 render 97 keep 96 (-1 end)" in out
    assert "kept 500 of 501 frames rendered" in out
    [render] = (tmp_path / "dry" / "render_jobs").glob("*.json")
    lows = [j for j in json.loads(render.read_text())["jobs"] if j["job_type"] == LOW]
    assert [(j["frames_to_render"], j["frames_kept"], j["trim_end_frames"]) for j in lows] == [
        (101, 101, 0), (101, 101, 0), (101, 101, 0), (101, 101, 0), (97, 96, 1)
    ]  # fmt: skip
    workflow = json.loads((tmp_path / "dry" / "workflows" / "workflow_015_combine.json").read_text())["workflow"]
    assert workflow["25"]["inputs"]["frame_load_cap"] == 96  # the combine keeps the last chunk's 96 frames


def test_dry_run_shows_the_overlap_trim(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRY_RUN_TEMP_DIR", str(tmp_path / "dry"))
    argv = ["--dry-run", "--prompt-file", str(prompt(tmp_path, 22)), "--frames-per-chunk", "9", "--overlap", "2"]
    assert run([*argv, "--log-level", "error"]) == 0
    out = capsys.readouterr().out
    assert "frames 0-8 render 9 keep 9 " in out
    assert "frames 9-15 render 9 keep 7 (-2 start)" in out
    assert "frames 16-21 render 9 keep 6 (-2 start, -1 end)" in out


def test_help_documents_the_precedence_and_the_trimming(capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "flag > prompt file / task params > profile defaults > built-in" in text
    assert "renders the next 4k+1 >= n" in text and "frames_per_chunk: N" in text


@pytest.mark.parametrize(
    ("defaults", "words"),
    [
        ({"frames_per_chunk": "81"}, "defaults.frames_per_chunk: expected an integer >= 1, got '81'"),
        ({"frames_per_chunk": 0}, "defaults.frames_per_chunk: expected an integer >= 1"),
        ({"overlap": -1}, "defaults.overlap: expected an integer >= 0"),
        ({"frames_per_chunks": 81}, "defaults.frames_per_chunks: unknown key; known: frames_per_chunk"),
        ({"retry_delay_s": True}, "defaults.retry_delay_s: expected a number >= 0"),
    ],
)
def test_bad_profile_defaults_fail_when_the_profile_loads(tmp_path, defaults, words):
    with pytest.raises(ProfileError) as info:
        load_profile(write_profile(tmp_path, "bad", **defaults))
    assert words in str(info.value)


def test_a_combine_workflow_that_cannot_cap_fails_before_rendering_when_a_chunk_has_a_surplus(tmp_path):
    path = write_profile(tmp_path, "nocap")
    data = yaml.safe_load(path.read_text())
    del data["combine_roles"]["new_segment"]["cap_input"]
    path.write_text(yaml.safe_dump(data))
    profile = load_profile(path)
    with pytest.raises(ProfileError, match=r"combine_roles.new_segment.cap_input: needed to keep 96 .* chunk 5"):
        plan_for(parse_text("clip\n\n500\n\npos\n\nneg\n"), profile)
    assert plan_for(parse_text("clip\n\n505\n\npos\n\nneg\n"), profile).chunks == 5  # 5 x 101: nothing to trim


def test_max_retries_comes_from_the_task_then_the_profile_then_built_in(tmp_path):
    write_profile(tmp_path, "retry2", max_retries=2)
    write_profile(tmp_path, "noretry", max_retries=None)
    base = {"video_name": "v", "total_frames": 30, "positive_prompt": "a cat"}
    for profile, extra, expected in (("retry2", {}, 2), ("retry2", {"max_retries": 5}, 5), ("noretry", {}, 3)):
        spec, run_opts = split_params({**base, "profile": profile, **extra})
        loaded, _state, _ov = prepare_chain(spec, None, task=True, profiles_dir=tmp_path)
        options = ChainOptions.from_profile(loaded, node_overrides=None, **run_opts)
        assert options.max_retries == expected, (profile, extra)
    args = argparse.Namespace(frames_per_chunk=None, max_retries=None, keep_intermediate=False, profile=None,
                              overlap=None, reference_offset=None)  # fmt: skip
    assert "max_retries" not in local.task_params(parse_text("clip\n\n30\n\np\n\nn\n"), args)
