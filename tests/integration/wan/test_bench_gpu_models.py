"""The GPU benchmark's random-weight models (bench/gpu/make_models.py) at toy size on the CPU, loaded back through
ComfyUI 0.3.64's own loaders: each file must be detected as the model type the Wan 2.2 graphs expect (T2V and
I2V 14B layouts, WAN22_S2V with its audio modules, wav2vec2 large, LoRAs that patch their model), and
``--layers`` must keep the type while changing the depth. And the coverage phase's tasks pass their contracts, so
a device call is not spent on a params typo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_worker.builders import build_resolved, resolve
from tests.comfy_server_0364 import comfy_0364_available, comfy_0364_paths

REPO = Path(__file__).resolve().parents[3]
MAKE_MODELS = REPO / "bench" / "gpu" / "make_models.py"


def make_models(tmp_path: Path, *args: str) -> dict[str, str]:
    """Run make_models.py with the 0.3.64 test ComfyUI's python; {model name: what ComfyUI detected}."""
    if not comfy_0364_available():
        pytest.skip("ComfyUI 0.3.64 not installed: run scripts/setup_test_comfyui_0364.sh")
    python, tree = comfy_0364_paths()
    out = subprocess.run(
        [str(python), str(MAKE_MODELS), "--tiny", "--check", "--comfy", str(tree), "--models-dir", str(tmp_path),
         *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    detected = {}
    for line in out.stdout.splitlines():
        if ": ComfyUI detects " in line:
            name, what = line.removeprefix("make_models: ").split(": ComfyUI detects ", 1)
            detected[name] = what
    return detected


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header (8-byte length, then JSON)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return [k for k in json.loads(f.read(size)) if k != "__metadata__"]


@pytest.mark.comfyui
def test_t2v_s2v_loras_and_wav2vec2_are_detected_as_the_graphs_expect(tmp_path: Path) -> None:
    found = make_models(tmp_path, "t2v_14b_high", "lora_t2v_high", "s2v_14b", "i2v_14b_low", "wav2vec2")
    assert found["t2v_14b_high"].startswith("WAN21 config=WAN21_T2V scaled_fp8=torch.float8_e4m3fn"), found
    assert found["i2v_14b_low"].startswith("WAN21 config=WAN21_T2V scaled_fp8=torch.float8_e4m3fn"), found
    assert found["s2v_14b"].startswith("WAN22_S2V config=WAN22_S2V scaled_fp8=torch.float8_e4m3fn"), found
    assert "patches 0 " not in found["lora_t2v_high"] and "of t2v_14b_high's layers" in found["lora_t2v_high"]
    assert found["wav2vec2"] == "Wav2Vec2Model embed_dim=1024"


@pytest.mark.comfyui
def test_layers_changes_the_depth_not_the_type(tmp_path: Path) -> None:
    found = make_models(tmp_path, "--layers", "3", "t2v_14b_low", "s2v_14b")
    assert found["t2v_14b_low"].startswith("WAN21 config=WAN21_T2V"), found
    assert found["s2v_14b"].startswith("WAN22_S2V config=WAN22_S2V"), found
    for name in ("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "wan2.2_s2v_14B_fp8_scaled.safetensors"):
        blocks = {
            k.split(".")[1] for k in safetensors_keys(tmp_path / "diffusion_models" / name) if k.startswith("blocks.")
        }
        assert blocks == {"0", "1", "2"}, (name, blocks)


def test_coverage_cases_pass_their_contracts() -> None:
    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    try:
        from bench_wan_gpu import COVERAGE_SIZE, coverage_cases  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(REPO / "bench" / "gpu"))
    cases = coverage_cases(*COVERAGE_SIZE)
    assert {t for _label, t, _p in cases} == {
        "comfyui_t2v",
        "comfyui_i2v",
        "comfyui_flf2v",
        "comfyui_ti2v",
        "comfyui_s2v",
    }
    for label, task_type, params in cases:
        resolved = resolve(task_type, params)  # InputRejected names the key
        media = {k: f"{k}.png" for k in resolved.media}
        graph = build_resolved(resolved, media)
        assert graph, label


def test_pick_cases_fits_a_phase_to_a_short_call(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    try:
        from bench_wan_gpu import pick_cases  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(REPO / "bench" / "gpu"))
    cases = [("a", 1), ("b", 2), ("c", 3)]
    for var in ("K_ONLY", "K_CASES"):
        monkeypatch.delenv(var, raising=False)
    assert pick_cases(cases, "K") == cases
    monkeypatch.setenv("K_CASES", "2")
    assert pick_cases(cases, "K") == cases[:2]
    monkeypatch.setenv("K_ONLY", "c,a")  # names win over a count, in the phase's order
    assert pick_cases(cases, "K") == [("a", 1), ("c", 3)]
    monkeypatch.setenv("K_ONLY", "a,typo")  # a misspelt name stops the run before any GPU time is spent
    with pytest.raises(SystemExit, match=r"K_ONLY: no case \['typo'\]"):
        pick_cases(cases, "K")
