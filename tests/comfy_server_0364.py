"""Start the real ComfyUI 0.3.64 (scripts/setup_test_comfyui_0364.sh) for tests of graphs that need current core
nodes (Wan 2.2, CreateVideo / SaveVideo, LoadAudio / AudioEncoder*). The older server (tests/comfy_server.py) stays
the one most tests use.

CPU only, no weights: :func:`place_models` writes empty files with the names a graph's loaders ask for into the
server's private model folders, which is all ``/prompt`` validation looks at (it lists file names). Such a prompt
is accepted, then fails as soon as a loader reads the empty file, so tests interrupt or delete it once accepted.

    proc, base_url = start_comfyui_0364(free_port())
    place_models(proc.workdir, graph)
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfy_worker.engine.workflow import model_folder
from tests.comfy_server import comfy_test_home, launch_comfyui, private_args

MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "loras", "audio_encoders", "checkpoints", "clip_vision")


def comfy_0364_paths() -> tuple[Path, Path]:
    """(python, comfyui_dir) of the 0.3.64 installation."""
    home = comfy_test_home()
    return home / "venv-0.3.64" / "bin" / "python", home / "comfyui-0.3.64"


def comfy_0364_available() -> bool:
    python, tree = comfy_0364_paths()
    return python.exists() and (tree / "main.py").is_file()


def models_in(graph: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(models folder, file name) for every model file a graph's loader nodes name."""
    found = []
    for node in graph.values():
        for name, value in (node.get("inputs") or {}).items():
            folder = model_folder(str(node.get("class_type")), name)
            if folder and isinstance(value, str):
                found.append((folder, value))
    return sorted(set(found))


def place_models(workdir: Path, graph: Mapping[str, Any]) -> list[Path]:
    """Empty placeholder files for every model ``graph`` names, in the server's model folders."""
    made = []
    for folder, name in models_in(graph):
        path = workdir / "models" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        made.append(path)
    return made


def _args(workdir: Path) -> list[str]:
    models = workdir / "models"
    lines = ["comfy_worker_placeholders:", f"    base_path: {models}"]
    for folder in MODEL_FOLDERS:
        (models / folder).mkdir(parents=True, exist_ok=True)
        lines.append(f"    {folder}: {folder}")
    paths_yaml = workdir / "extra_model_paths.yaml"
    paths_yaml.write_text("\n".join(lines) + "\n")
    return private_args(workdir, paths_yaml)


def start_comfyui_0364(
    port: int, *, workdir: Path | None = None, timeout_s: float = 120.0, extra_args: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ComfyUI 0.3.64 on 127.0.0.1:port with private input/output/model folders; wait for /system_stats.
    ``extra_args``: more of ComfyUI's arguments (the worker's custom-node folder, as its supervisor passes it)."""
    python, tree = comfy_0364_paths()
    if not comfy_0364_available():
        raise RuntimeError(f"no ComfyUI 0.3.64 in {comfy_test_home()}: run scripts/setup_test_comfyui_0364.sh")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="cw-comfy-0364-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return launch_comfyui(python, tree, port, [*_args(workdir), *(extra_args or [])], workdir, timeout_s)
