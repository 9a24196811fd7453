"""Small API-format workflows for the exploration suite's tests (core nodes and tests/comfy_nodes, CPU-cheap)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def tiny_video(seconds: float = 0.2, prefix: str = "explore/vid") -> dict[str, Any]:
    """A sampler-like graph: latent + a solid image -> CWFakeSampler (seed, denoise) -> CWSlow -> an mp4.

    CWSlow is never cached (IS_CHANGED is NaN), so every queued prompt really executes."""
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 8421504}},
        "3": {"class_type": "CWFakeSampler", "inputs": {"latent": ["1", 0], "image": ["2", 0], "frames": 6,
                                                         "seed": 42, "denoise": 0.8}},
        "4": {"class_type": "CWSlow", "inputs": {"seconds": seconds, "steps": 3, "images": ["3", 1]}},
        "5": {"class_type": "CWSaveVideoMP4", "inputs": {"images": ["4", 0], "fps": 8.0, "filename_prefix": prefix}},
    }


def write_batch(tmp: Path, *, workflow: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """A batch config over :func:`tiny_video` (denoise, colour, seed) in ``tmp``; keys can be overridden."""
    (tmp / "wf.json").write_text(json.dumps(workflow or tiny_video()))
    config: dict[str, Any] = {
        "workflow_file": "wf.json",
        "sampling_strategy": "lhs",
        "num_samples": 4,
        "seeds_per_sample": 1,
        "parameters": {
            "denoise": {"path": "nodes.3.inputs.denoise", "type": "continuous", "min": 0.2, "max": 1.0},
            "color": {"path": "nodes.2.inputs.color", "type": "values", "values": [255, 65280, 16711680]},
            "seed": {"path": "nodes.3.inputs.seed", "type": "random_seed"},
        },
        "output": {"directory": str(tmp / "output"), "run_name_pattern": "{run_id:04d}_dn{denoise:.2f}"},
    }
    output = {**config["output"], **overrides.pop("output", {})}  # keep the directory under tmp
    config.update(overrides, output=output)
    path = tmp / "batch.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
