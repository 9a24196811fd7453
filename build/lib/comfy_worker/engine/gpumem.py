"""The GPU's used memory as the driver sees it, for the VRAM hand-over between engines (optional).

:func:`detect` returns a probe reading the GPU this worker's engines use (the first of ``CUDA_VISIBLE_DEVICES``,
else GPU 0): through NVML when ``pynvml`` (the ``nvidia-ml-py`` package) is importable and initialises, else
through ``nvidia-smi`` when it is on PATH and answers, else None — a machine without a GPU (CI) or without
either tool, where the hand-over relies on the engines' own figures. A probe never raises: a failed read is
None.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Protocol

from comfy_worker.logs import get_logger

log = get_logger(__name__)
MIB = 1024 * 1024


class GpuProbe(Protocol):
    source: str  # "nvml" | "nvidia-smi" | anything a test injects

    def used_bytes(self) -> int | None: ...


def visible_device() -> str:
    """The GPU the engines see as cuda:0: the first of CUDA_VISIBLE_DEVICES (an index or a UUID), else "0"."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return first or "0"


class NvmlProbe:
    source = "nvml"

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, device: str) -> NvmlProbe | None:
        try:
            import pynvml  # type: ignore[import-not-found, import-untyped, unused-ignore]

            pynvml.nvmlInit()
            if device.isdigit():
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(device))
            else:
                handle = pynvml.nvmlDeviceGetHandleByUUID(device)
            probe = cls(pynvml, handle)
            return probe if probe.used_bytes() is not None else None
        except Exception:  # not installed, no driver, no such device
            return None

    def used_bytes(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception:
            return None


class SmiProbe:
    source = "nvidia-smi"

    def __init__(self, binary: str, device: str) -> None:
        self._argv = [binary, f"--id={device}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]

    @classmethod
    def open(cls, device: str) -> SmiProbe | None:
        binary = shutil.which("nvidia-smi")
        if binary is None:
            return None
        probe = cls(binary, device)
        return probe if probe.used_bytes() is not None else None

    def used_bytes(self) -> int | None:
        try:
            out = subprocess.run(self._argv, capture_output=True, text=True, timeout=5, check=True).stdout
            return int(float(out.strip().splitlines()[0])) * MIB
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None


def detect() -> GpuProbe | None:
    """NVML, else nvidia-smi, else None (see the module docstring)."""
    device = visible_device()
    probe: GpuProbe | None = NvmlProbe.open(device) or SmiProbe.open(device)
    log.info("gpu_probe", source=probe.source if probe else None, device=device)
    return probe
