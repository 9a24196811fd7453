"""Warm start (daemon/warm.py): which files are prefetched, the RAM bound, the reading itself, the warm-up graph
and the settings' errors. The daemon-level behaviour (warm-up never delaying a waiting task) is in
tests/integration/daemon/test_warm_daemon.py."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from comfy_worker.builders.params import DEFAULTS
from comfy_worker.config import load_settings
from comfy_worker.daemon.warm import (
    WarmStart,
    default_model_files,
    mem_available,
    read_into_cache,
    select_files,
    wait_prefetch,
    warmup_graph,
    within_ram,
)
from comfy_worker.errors import ConfigError


def _put(root: Path, rel: str, size: int) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\x01" * size)
    return p


def test_default_files_are_what_the_default_graphs_load() -> None:
    ti2v = default_model_files(["comfyui_ti2v"])
    assert sorted(ti2v) == sorted([
        ("text_encoders", DEFAULTS["comfyui_ti2v"]["text_encoder"]),
        ("diffusion_models", DEFAULTS["comfyui_ti2v"]["diffusion_model"]),
        ("vae", DEFAULTS["comfyui_ti2v"]["vae_model"]),
    ])  # fmt: skip
    both = default_model_files(["comfyui_i2v", "comfyui_ti2v", "prompt_runner", "comfy"])
    names = [n for _, n in both]
    assert len(names) == len(set(names)), "a file shared by two types is read once"
    assert DEFAULTS["comfyui_i2v"]["high_noise_model"] in names and DEFAULTS["comfyui_i2v"]["low_noise_model"] in names
    assert DEFAULTS["comfyui_ti2v"]["diffusion_model"] in names
    # the i2v default graph has no 4-step LoRA (use_lora is off by default): its LoRA files are not read
    assert DEFAULTS["comfyui_i2v"]["high_noise_lora"] not in names
    assert default_model_files(["comfy", "prompt_runner"]) == []


def test_selection_builder_defaults_manifest_groups_and_warm_models(tmp_path: Path) -> None:
    models = tmp_path / "models"
    d = DEFAULTS["comfyui_ti2v"]
    _put(models, f"diffusion_models/{d['diffusion_model']}", 3000)
    _put(models, f"vae/{d['vae_model']}", 1000)  # the text encoder is absent
    s = load_settings({"MODELS_DIR": str(models), "WARM_PREFETCH": "true"})
    sel = select_files(s, ["comfyui_ti2v"])
    assert sel.source == "builder defaults"
    assert sorted(p.name for p, _ in sel.files) == sorted([d["diffusion_model"], d["vae_model"]])
    assert sel.missing == [f"text_encoders/{d['text_encoder']}"]
    assert dict((p.name, n) for p, n in sel.files)[d["diffusion_model"]] == 3000

    manifest = tmp_path / "models.yaml"
    manifest.write_text(
        "version: 1\nmodels:\n"
        f"  - {{name: {d['vae_model']}, folder: vae, url: 'https://example.invalid/v', groups: [g1]}}\n"
        "  - {name: other.safetensors, folder: loras, url: 'https://example.invalid/o', groups: [g2]}\n"
    )
    s = load_settings({"MODELS_DIR": str(models), "WARM_PREFETCH": "true", "MODELS_MANIFEST": str(manifest),
                       "MODELS_GROUPS": "g1"})  # fmt: skip
    sel = select_files(s, ["comfyui_ti2v"])
    assert (sel.source, [p.name for p, _ in sel.files], sel.missing) == ("MODELS_GROUPS", [d["vae_model"]], [])

    elsewhere = _put(tmp_path / "other", "x.safetensors", 10)
    s = load_settings(
        {
            "MODELS_DIR": str(models),
            "WARM_PREFETCH": "true",
            "MODELS_MANIFEST": str(manifest),
            "MODELS_GROUPS": "g1",
            "WARM_MODELS": f"vae/{d['vae_model']},{elsewhere},vae/nope.safetensors,vae/{d['vae_model']}",
        }
    )
    sel = select_files(s, ["comfyui_ti2v"])  # WARM_MODELS wins over the manifest, duplicates read once
    assert sel.source == "WARM_MODELS"
    assert [p for p, _ in sel.files] == [models / "vae" / d["vae_model"], elsewhere]
    assert sel.missing == ["vae/nope.safetensors"]


def test_ram_bound_takes_files_in_order_within_the_budget() -> None:
    files = [(Path("a"), 600), (Path("b"), 500), (Path("c"), 300), (Path("d"), 100)]
    taken, skipped = within_ram(files, 1250, 0.8)  # budget 1000
    assert [p.name for p, _ in taken] == ["a", "c", "d"]
    assert [p.name for p, _ in skipped] == ["b"]
    assert sum(s for _, s in taken) <= 1000
    assert within_ram(files, None, 0.8) == ([], files)  # RAM unknown: read nothing
    assert within_ram(files, 10**9, 1.0) == (files, [])


def test_mem_available_reads_meminfo() -> None:
    text = "MemTotal:       131072000 kB\nMemFree:  1000 kB\nMemAvailable:   100000000 kB\n"
    assert mem_available(text) == 100000000 * 1024
    assert mem_available("MemTotal: 5 kB\n") is None
    assert (mem_available() or 0) > 0  # this machine's /proc/meminfo


def test_read_into_cache_reads_every_byte_with_several_streams(tmp_path: Path) -> None:
    files = [(p, p.stat().st_size) for p in (_put(tmp_path, "big", 1_000_003), _put(tmp_path, "small", 17))]
    assert read_into_cache(files, streams=4, piece=65536) == 1_000_020
    stop = threading.Event()
    stop.set()
    assert read_into_cache(files, streams=2, stop=stop, piece=65536) == 0  # stopped before it began


async def test_prefetch_thread_is_bounded_by_ram(tmp_path: Path) -> None:
    models = tmp_path / "models"
    d = DEFAULTS["comfyui_ti2v"]
    _put(models, f"diffusion_models/{d['diffusion_model']}", 5000)
    _put(models, f"vae/{d['vae_model']}", 1000)
    s = load_settings({"MODELS_DIR": str(models), "WARM_PREFETCH": "true", "WARM_PREFETCH_RAM_FRACTION": "0.5"})
    warm = WarmStart(s, ["comfyui_ti2v"], meminfo=lambda: 4000)  # budget 2000: only the VAE fits
    thread = await warm.start_prefetch()
    assert thread is not None and wait_prefetch(thread, 30)
    assert warm.prefetched_bytes == 1000
    assert await WarmStart(s, ["comfyui_ti2v"], meminfo=lambda: 100).start_prefetch() is None  # nothing fits
    off = load_settings({"MODELS_DIR": str(models)})
    assert await WarmStart(off, ["comfyui_ti2v"]).start_prefetch() is None  # WARM_PREFETCH off: nothing read


async def test_prefetch_start_torch_waits_for_comfyuis_torch_import(tmp_path: Path) -> None:
    models = tmp_path / "models"
    d = DEFAULTS["comfyui_ti2v"]
    _put(models, f"diffusion_models/{d['diffusion_model']}", 5000)
    env = {"MODELS_DIR": str(models), "WARM_PREFETCH": "true", "COMFY_PATH": str(tmp_path),
           "WARM_PREFETCH_START": "torch"}  # fmt: skip
    launched = SimpleNamespace(attached=False, line_watchers=[])
    warm = WarmStart(load_settings(env), ["comfyui_ti2v"], meminfo=lambda: 10**6)
    warm.watch(launched)
    assert launched.line_watchers == [warm.engine_output]
    thread = await warm.start_prefetch()
    assert thread is not None
    for line in ("Adding extra search path custom_nodes /x", "Checkpoint files will always be loaded safely."):
        warm.engine_output(line)
    assert not wait_prefetch(thread, 0.3) and warm.prefetched_bytes == 0  # still waiting for the import
    warm.engine_output("Total VRAM 81079 MB, total RAM 128869 MB")
    assert wait_prefetch(thread, 30) and warm.prefetched_bytes == 5000
    # ComfyUI answering opens it too (a version that prints no such line), and so does having none to wait for
    for setup in (lambda w: w.engine_ready(), lambda w: w.watch(None),
                  lambda w: w.watch(SimpleNamespace(attached=True, line_watchers=[]))):  # fmt: skip
        warm = WarmStart(load_settings(env), ["comfyui_ti2v"], meminfo=lambda: 10**6)
        setup(warm)
        thread = await warm.start_prefetch()
        assert thread is not None and wait_prefetch(thread, 30) and warm.prefetched_bytes == 5000
    # stopped while it waits: the thread ends without reading
    warm = WarmStart(load_settings(env), ["comfyui_ti2v"], meminfo=lambda: 10**6)
    thread = await warm.start_prefetch()
    assert thread is not None
    warm.stop()
    assert wait_prefetch(thread, 30) and warm.prefetched_bytes == 0


async def test_the_model_files_are_looked_at_once_and_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    d = DEFAULTS["comfyui_ti2v"]
    _put(models, f"diffusion_models/{d['diffusion_model']}", 5000)
    _put(models, f"vae/{d['vae_model']}", 1000)  # the text encoder is absent
    looked_at: list[tuple[str, str]] = []  # (file, thread) of every stat of a file under MODELS_DIR
    real_stat = Path.stat

    def stat(self: Path, *a: Any, **kw: Any) -> Any:
        if self.is_relative_to(models):
            looked_at.append((self.relative_to(models).as_posix(), threading.current_thread().name))
        return real_stat(self, *a, **kw)

    monkeypatch.setattr(Path, "stat", stat)
    s = load_settings({"MODELS_DIR": str(models), "WARM_PREFETCH": "true", "WARM_UP": "true", "COMFY_URL": "http://h"})
    warm = WarmStart(s, ["comfyui_ti2v"], meminfo=lambda: 10**9)
    thread = await warm.start_prefetch()
    assert thread is not None and wait_prefetch(thread, 30)
    assert warm.absent_models(warmup_graph("comfyui_ti2v")) == [f"text_encoders/{d['text_encoder']}"]
    names = [f for f, _ in looked_at]
    assert sorted(names) == sorted(f"{k}/{d[v]}" for k, v in (("diffusion_models", "diffusion_model"),
                                                               ("vae", "vae_model"),
                                                               ("text_encoders", "text_encoder"))), looked_at
    assert threading.main_thread().name not in {t for _, t in looked_at}, "chosen on the event loop's thread"


@pytest.mark.parametrize("task_type", list(DEFAULTS))
def test_warmup_graph_is_tiny_and_loads_the_default_models(task_type: str) -> None:
    g = warmup_graph(task_type)
    loaded = {
        v for n in g.values() for k, v in n["inputs"].items() if isinstance(v, str) and v.endswith(".safetensors")
    }
    expected = {n for _, n in default_model_files([task_type])}
    assert loaded == expected
    sizes = [(n["inputs"].get("width"), n["inputs"].get("height")) for n in g.values() if "width" in n["inputs"]]
    assert sizes and all(s == (64, 64) for s in sizes)
    steps = {n["inputs"]["steps"] for n in g.values() if "steps" in n["inputs"]}
    assert steps and max(steps) <= 2
    saves = [n["inputs"]["filename_prefix"] for n in g.values() if "filename_prefix" in n["inputs"]]
    assert saves and all(p.startswith("comfy-worker-warmup/") for p in saves)


@pytest.mark.parametrize(
    ("env", "field", "fix"),
    [
        ({"WARM_PREFETCH": "maybe"}, "WARM_PREFETCH", "true or false"),
        ({"WARM_PREFETCH": "true"}, "WARM_PREFETCH", "MODELS_DIR"),
        ({"WARM_PREFETCH": "true", "MODELS_DIR": "/m", "WARM_PREFETCH_STREAMS": "0"}, "WARM_PREFETCH_STREAMS", ">= 1"),
        ({"WARM_PREFETCH_START": "boot"}, "WARM_PREFETCH_START", "launch"),
        ({"WARM_PREFETCH": "true", "MODELS_DIR": "/m", "WARM_PREFETCH_RAM_FRACTION": "1.5"},
         "WARM_PREFETCH_RAM_FRACTION", "(0, 1]"),
        ({"WARM_PREFETCH": "true", "MODELS_DIR": "/m", "WARM_PREFETCH_RAM_FRACTION": "0"},
         "WARM_PREFETCH_RAM_FRACTION", ">= 0.01"),
        ({"WARM_PREFETCH": "true", "MODELS_DIR": "/m", "WARM_MODELS": "vae/../../etc/passwd"}, "WARM_MODELS", "not .."),
        ({"WARM_PREFETCH": "true", "WARM_MODELS": "vae/x.safetensors"}, "WARM_MODELS", "MODELS_DIR"),
        ({"MODELS_DIR": "/m", "WARM_MODELS": "vae/x.safetensors"}, "WARM_MODELS", "WARM_PREFETCH=true"),
        ({"WARM_UP": "true"}, "WARM_UP", "COMFY_PATH or COMFY_URL"),
    ],
)  # fmt: skip
def test_settings_errors_name_the_variable_and_the_fix(env: dict[str, str], field: str, fix: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env)
    assert field in str(exc.value) and fix in str(exc.value)


def test_settings_defaults_and_valid_values() -> None:
    s = load_settings({})
    assert (s.warm_prefetch, s.warm_up, s.warm_models, s.warm_prefetch_streams, s.warm_prefetch_ram_fraction,
            s.warm_prefetch_start) == (False, False, (), 8, 0.8, "launch")  # fmt: skip
    s = load_settings({"WARM_PREFETCH": "true", "WARM_MODELS": "/abs/a.safetensors, vae/b.safetensors",
                       "COMFY_PATH": "/c", "WARM_UP": "yes", "WARM_PREFETCH_STREAMS": "16"})  # fmt: skip
    assert s.warm_models == ("/abs/a.safetensors", "vae/b.safetensors") and s.warm_up and s.warm_prefetch_streams == 16


@pytest.mark.parametrize("task_type", list(DEFAULTS))
def test_compile_param_wraps_each_diffusion_model_and_is_off_by_default(task_type: str) -> None:
    from comfy_worker.builders import build
    from comfy_worker.builders.params import MEDIA
    from comfy_worker.errors import InputRejected

    media = {k: "x.png" if k != "audio" else "x.wav" for k in MEDIA[task_type]}
    plain = build(task_type, {"seed": 1}, media)
    assert not [n for n in plain.values() if n["class_type"] == "TorchCompileModel"]
    g = build(task_type, {"seed": 1, "compile": True}, media)
    compiled = {k: n for k, n in g.items() if n["class_type"] == "TorchCompileModel"}
    unets = [k for k, n in g.items() if n["class_type"] == "UNETLoader"]
    assert len(compiled) == len(unets) and all(n["inputs"]["backend"] == "inductor" for n in compiled.values())
    for node in g.values():  # every sampler takes a compiled model
        model = node["inputs"].get("model")
        if node["class_type"].startswith("KSampler"):
            assert model[0] in compiled
    with pytest.raises(InputRejected, match="compile must be true or false"):
        build(task_type, {"compile": "yes"}, media)
