"""bench/gpu/wan2gp_real (the real-Wan2GP GPU run): its scripts pass shellcheck, and the gradio stand-in supports
what Wan2GP's module-level code does with gradio (attribute access, calls, subclassing, class attributes,
submodules, decorators, context managers), in a fresh interpreter so the real gradio (if any) is not touched."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "bench" / "gpu" / "wan2gp_real"


@pytest.mark.parametrize("script", ["fetch.sh", "setup.sh", "run.sh"])
def test_shellcheck_passes(script: str) -> None:
    tool = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if tool is None:
        pytest.fail("shellcheck is not installed: pip install -e '.[dev]'")
    r = subprocess.run([tool, "-x", str(BENCH / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


USES = r"""
import gradio as gr
from gradio.themes.utils.sizes import Size
from gradio_rangeslider import RangeSlider
from gradio.components.gallery import GalleryImageType

original = gr.Video._format_video            # wgp patches class attributes of components
gr.Video._format_video = lambda self, v: v

class Gallery(gr.Gallery):                   # shared.gradio.* subclass components
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

with gr.Blocks(theme=gr.themes.Soft()) as demo, gr.Row():
    g = Gallery(label="x", value=None)
    g.select(fn=lambda: None, inputs=[g], outputs=[g]).then(fn=print)

@gr.render(inputs=[g])
def rendered():
    return 1

assert rendered() == 1 and isinstance(g, gr.Gallery) and Size and RangeSlider and GalleryImageType
assert gr.update(visible=False) == {"__type__": "update", "visible": False}
assert list(gr.Dropdown(choices=[1])) == [] and gr.__version__ == "5.29.0"
try:
    raise gr.Error("refused")
except gr.Error as exc:
    assert str(exc) == "refused"
gr.Info("shown")
print("ok")
"""


def test_the_gradio_stand_in_takes_what_wan2gp_does_with_gradio() -> None:
    r = subprocess.run([sys.executable, "-c", USES], capture_output=True, text=True,
                       env={"PYTHONPATH": str(BENCH / "standins"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["gradio.Info: shown", "ok"]
