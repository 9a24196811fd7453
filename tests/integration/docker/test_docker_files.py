"""docker/: the Dockerfile passes hadolint, the shell scripts pass shellcheck, and the entrypoint — run here
as a plain script — refuses a bad environment with one line per variable and otherwise prepares ComfyUI's
model paths and hands over to the command. (The built image itself: scripts/test_image.sh.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (scripts/install.sh does)")
    return path


def test_hadolint_passes_the_dockerfile() -> None:
    r = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "script",
    ["docker/entrypoint.sh", "docker/install-custom-nodes.sh", "docker/healthcheck.sh", "scripts/test_image.sh"],
)
def test_shellcheck_passes(script: str) -> None:
    r = subprocess.run([tool("shellcheck"), "-x", str(REPO / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def entrypoint(tmp_path: Path, env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir(exist_ok=True)
    (comfy / "main.py").write_text("")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    base = {"PATH": os.environ["PATH"], "HOME": str(home), "COMFY_PATH": str(comfy), "RUN_AS_ROOT": "true"}
    return subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), *cmd],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_environment_is_refused_with_one_line_per_variable(tmp_path: Path) -> None:
    r = entrypoint(
        tmp_path,
        {"DATABASE_URL": "mysql://db/x", "MODELS_SYNC": "sometimes", "MODELS_DIR": "models"},
        "true",
    )
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("entrypoint: ERROR: ")]
    assert [e.split(":")[2].strip() for e in errors] == ["WORKER_ID", "DATABASE_URL", "MODELS_SYNC", "MODELS_DIR"]
    assert "4 problem(s) with the environment; the worker was not started" in r.stderr


@pytest.mark.parametrize(
    ("env", "variable", "text"),
    [
        ({"WORKER_ID": "w1"}, "DATABASE_URL", "a pod needs the shared queue"),
        ({"WORKER_ID": "w1", "SUPABASE_URL": "https://x.supabase.co"}, "SUPABASE_SERVICE_ROLE_KEY", "set both"),
        ({"WORKER_ID": "w1", "SUPABASE_SERVICE_ROLE_KEY": "k"}, "SUPABASE_URL", "set both"),
        ({"WORKER_ID": "has space", "DATABASE_URL": "sqlite:///q.db"}, "WORKER_ID", "is not a valid id"),
        (
            {"WORKER_ID": "w1", "DATABASE_URL": "sqlite:///q.db", "MODELS_MANIFEST": "/nope.yaml"},
            "MODELS_MANIFEST",
            "no file",
        ),
    ],
)
def test_each_refusal_names_the_variable_and_the_fix(
    tmp_path: Path, env: dict[str, str], variable: str, text: str
) -> None:
    r = entrypoint(tmp_path, env, "true")
    assert r.returncode == 2
    [line] = [x for x in r.stderr.splitlines() if x.startswith("entrypoint: ERROR: ")]
    assert line.startswith(f"entrypoint: ERROR: {variable}: ") and text in line


def test_a_good_environment_execs_the_command_with_comfyuis_paths_on_the_volume(tmp_path: Path) -> None:
    models = tmp_path / "volume" / "models"
    (models / "vae").mkdir(parents=True)
    r = entrypoint(
        tmp_path,
        {
            "RUNPOD_POD_ID": "abc123",
            "DATABASE_URL": "postgresql://u@db/q",
            "MODELS_DIR": str(models),
            "COMFY_ARGS": "--cpu",
        },
        sys.executable,
        "-c",
        "import json, os; print(json.dumps(dict(os.environ)))",
    )
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["WORKER_ID"] == "runpod-abc123"
    paths_file = tmp_path / "home" / "extra_model_paths.yaml"
    assert env["COMFY_ARGS"] == f"--cpu --extra-model-paths-config {paths_file}"
    assert env["AUX_ANNOTATOR_CKPTS_PATH"] == f"{models}/annotator_ckpts"
    paths = yaml.safe_load(paths_file.read_text())["comfy_worker_volume"]
    assert paths["base_path"] == str(models) and paths["is_default"] is True
    for folder in ("diffusion_models", "text_encoders", "vae", "loras", "audio_encoders", "clip_vision", "checkpoints"):
        assert folder in paths[folder].split(), folder
    assert "starting runpod-abc123" in r.stderr


def test_models_sync_failure_is_reported_and_the_worker_still_starts(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(json.dumps({"models": [{"name": "private.safetensors", "folder": "loras"}]}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "comfy-worker").symlink_to(BIN / "comfy-worker")
    r = entrypoint(
        tmp_path,
        {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "WORKER_ID": "w1",
            "DATABASE_URL": "sqlite:///q.db",
            "MODELS_SYNC": "true",
            "MODELS_MANIFEST": str(manifest),
            "MODELS_DIR": str(tmp_path / "models"),
        },
        "echo",
        "worker-started",
    )
    assert r.returncode == 0, r.stderr
    assert "manual" in r.stdout and "loras/private.safetensors" in r.stdout
    assert "models sync did not install everything" in r.stderr
    assert r.stdout.strip().endswith("worker-started")


def image_wan2gp(tmp_path: Path) -> tuple[Path, Path]:
    """A /opt/Wan2GP as a WAN2GP=1 build leaves it: a checkout whose ckpts/ and loras/ link to the default volume,
    and a venv python."""
    wan = tmp_path / "opt" / "Wan2GP"
    (wan / "shared").mkdir(parents=True)
    (wan / "wgp.py").write_text("")
    (wan / "shared" / "api.py").write_text("")
    (wan / "ckpts").symlink_to("/runpod-volume/models/wan2gp")
    (wan / "loras").symlink_to("/runpod-volume/models/loras/wan2gp")
    python = tmp_path / "opt" / "wan2gp-venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    return wan, python


def test_an_image_with_wan2gp_turns_it_on_with_its_model_folders_on_the_volume(tmp_path: Path) -> None:
    wan, python = image_wan2gp(tmp_path)
    models = tmp_path / "volume" / "models"
    r = entrypoint(
        tmp_path,
        {"WORKER_ID": "w1", "DATABASE_URL": "sqlite:///q.db", "MODELS_DIR": str(models),
         "WAN2GP_IMAGE_PATH": str(wan), "WAN2GP_PYTHON": str(python)},
        sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))",
    )
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["WAN2GP_PATH"] == str(wan) and env["WAN2GP_PYTHON"] == str(python)
    # Wan2GP's checkpoints and LoRA roots now resolve to folders on the (non-default) volume, which exist
    assert (wan / "ckpts").resolve() == (models / "wan2gp").resolve() and (models / "wan2gp").is_dir()
    assert (wan / "loras").resolve() == (models / "loras" / "wan2gp").resolve()
    assert (models / "loras" / "wan2gp").is_dir()


def test_wan2gp_path_set_by_hand_to_the_image_s_checkout_gets_the_image_s_venv(tmp_path: Path) -> None:
    wan, python = image_wan2gp(tmp_path)
    r = entrypoint(
        tmp_path,
        {"WORKER_ID": "w1", "DATABASE_URL": "sqlite:///q.db", "MODELS_DIR": str(tmp_path / "models"),
         "WAN2GP_PATH": str(wan), "WAN2GP_IMAGE_PATH": str(wan), "WAN2GP_IMAGE_PYTHON": str(python)},
        sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["WAN2GP_PATH"] == str(wan) and env["WAN2GP_PYTHON"] == str(python)


def test_wan2gp_path_set_empty_keeps_the_image_on_comfyui_alone(tmp_path: Path) -> None:
    wan, _ = image_wan2gp(tmp_path)
    r = entrypoint(
        tmp_path,
        {"WORKER_ID": "w1", "DATABASE_URL": "sqlite:///q.db", "WAN2GP_PATH": "", "WAN2GP_IMAGE_PATH": str(wan)},
        sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))",
    )
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["WAN2GP_PATH"] == "" and "WAN2GP_PYTHON" not in env
    assert os.readlink(wan / "ckpts") == "/runpod-volume/models/wan2gp"  # untouched


def test_a_wan2gp_path_without_wan2gp_is_refused_naming_the_variable(tmp_path: Path) -> None:
    r = entrypoint(
        tmp_path,
        {"WORKER_ID": "w1", "DATABASE_URL": "sqlite:///q.db", "WAN2GP_PATH": str(tmp_path),
         "WAN2GP_PYTHON": str(tmp_path / "nope")},
        "true",
    )
    assert r.returncode == 2
    errors = [x for x in r.stderr.splitlines() if x.startswith("entrypoint: ERROR: ")]
    assert [e.split(":")[2].strip() for e in errors] == ["WAN2GP_PATH", "WAN2GP_PYTHON"]
    assert "set it empty to run ComfyUI alone" in errors[0]


def test_the_wan2gp_stage_is_off_by_default_and_pinned_to_a_full_commit() -> None:
    import re

    text = (DOCKER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (WAN2GP\w*)=(\S+)$", text, re.M))
    assert args["WAN2GP"] == "0"
    assert re.fullmatch(r"[0-9a-f]{40}", args["WAN2GP_REF"])
    # Wan2GP's model folders are links to the volume, which the entrypoint re-points
    assert "ln -s /runpod-volume/models/wan2gp /opt/Wan2GP/ckpts" in text
    assert "ln -s /runpod-volume/models/loras/wan2gp /opt/Wan2GP/loras" in text
