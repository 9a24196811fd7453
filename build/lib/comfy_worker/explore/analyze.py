"""``comfy-worker analyze``: every literal input of every node, categorised, with a suggested range; and a
commented YAML batch template with the obvious candidates (seeds, cfg, LoRA strengths) switched on.

Categories: seed, steps, cfg, sampler, scheduler, shift, denoise, strength, resolution (expensive), fps, text
(prompts: never varied by default), file (models, VAEs, images: fixed unless asked), other. Ranges start from
the current value, scaled per category, then clamped and snapped to the node's own ``/object_info``
min / max / step when the node type is known there; enum inputs suggest values the server allows.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_worker.engine.workflow import MODEL_EXTENSIONS, enum_values, input_specs, is_file_input

SEED_NAMES = ("seed", "noise_seed")
STEP_NAMES = ("steps", "start_at_step", "end_at_step", "start_step", "end_step")
CFG_NAMES = ("cfg", "guidance", "cfg_scale", "true_cfg", "guidance_scale")
RESOLUTION_NAMES = ("width", "height", "length", "num_frames", "frames", "frame_count", "batch_size",
                    "video_length")
FPS_NAMES = ("fps", "frame_rate", "force_rate")
TEXT_NAMES = ("text", "prompt", "positive_prompt", "negative_prompt", "positive", "negative", "text_g", "text_l")
MEDIA_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm", ".mov", ".wav", ".mp3", ".flac")
ENABLED = ("seed", "cfg", "lora_strength")
POPULAR = {"sampler": ("euler", "uni_pc", "dpmpp_2m", "euler_ancestral"),
           "scheduler": ("simple", "normal", "karras", "beta", "sgm_uniform")}
CATEGORIES = ("seed", "steps", "cfg", "sampler", "scheduler", "shift", "denoise", "lora_strength", "strength",
              "resolution", "fps", "text", "file", "other")
EXPENSIVE = "expensive: render time and memory grow with width x height x length"


@dataclass
class Finding:
    node_id: str
    class_type: str
    title: str
    input: str
    value: Any
    category: str
    kind: str  # INT | FLOAT | STRING | BOOLEAN | ENUM
    spec: dict[str, Any] = field(default_factory=dict)  # min / max / step / options from object_info
    suggestion: dict[str, Any] = field(default_factory=dict)  # type, min, max, step, values
    enabled: bool = False
    notes: list[str] = field(default_factory=list)
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "node_id", "class_type", "title", "input", "value",
                                               "category", "kind", "spec", "suggestion", "enabled", "notes")}


def _kind(value: Any, spec_kind: Any) -> str:
    if isinstance(spec_kind, list) or spec_kind == "COMBO":
        return "ENUM"
    if spec_kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
        return str(spec_kind)
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INT"
    if isinstance(value, float):
        return "FLOAT"
    return "STRING"


def categorise(class_type: str, name: str, value: Any, kind: str, opts: dict[str, Any]) -> str:
    lname, lclass = name.lower(), class_type.lower()
    text = value.lower() if isinstance(value, str) else ""
    if kind in ("INT", "FLOAT") and (lname in SEED_NAMES or lname.endswith("seed")):
        return "seed"
    if lname in ("sampler_name", "sampler"):
        return "sampler"
    if lname == "scheduler":
        return "scheduler"
    if is_file_input(class_type, name, opts) or text.endswith(MODEL_EXTENSIONS + MEDIA_EXTENSIONS) or (
        kind in ("STRING", "ENUM") and lname.endswith(("_name", "ckpt", "_path", "model", "lora", "vae"))
    ):
        return "file"
    if kind in ("INT", "FLOAT"):
        if lname in STEP_NAMES:
            return "steps"
        if lname in CFG_NAMES:
            return "cfg"
        if lname == "shift":
            return "shift"
        if lname.startswith("denoise"):
            return "denoise"
        if "strength" in lname:
            return "lora_strength" if "lora" in lclass else "strength"
        if lname in RESOLUTION_NAMES:
            return "resolution"
        if lname in FPS_NAMES:
            return "fps"
    if kind == "STRING" and (lname in TEXT_NAMES or opts.get("multiline") or " " in text or "prompt" in lname):
        return "text"
    return "other"


def _snap(v: float, spec: dict[str, Any], integer: bool) -> float:
    lo, hi, step = spec.get("min"), spec.get("max"), spec.get("step")
    if isinstance(lo, int | float):
        v = max(v, lo)
    if isinstance(hi, int | float):
        v = min(v, hi)
    if isinstance(step, int | float) and step > 0 and not integer:
        base = lo if isinstance(lo, int | float) and math.isfinite(lo) else 0
        v = base + round((v - base) / step) * step
        v = round(v, 6)
    return round(v) if integer else round(v, 4)


def suggest(f: Finding) -> dict[str, Any]:
    """The suggested parameter block (type, min, max, step, values) for one finding."""
    v, spec, cat = f.value, f.spec, f.category
    integer = f.kind == "INT"
    if cat == "seed":
        return {"type": "random_seed"}
    if f.kind == "ENUM":
        options = spec.get("options") or []
        extra = [o for o in POPULAR.get(cat, ()) if o in options and o != v][:2]
        return {"type": "values", "values": [v, *extra]}
    if f.kind in ("STRING", "BOOLEAN") or cat in ("text", "file"):
        return {"type": "values", "values": [v, (not v)] if f.kind == "BOOLEAN" else [v]}
    if not isinstance(v, int | float):
        return {"type": "values", "values": [v]}
    if cat == "steps":
        delta = max(1, round(abs(v) / 4))
        return {"type": "linear", "min": _snap(v - 2 * delta, spec, True), "max": _snap(v + 2 * delta, spec, True),
                "step": delta}
    if cat in ("resolution", "fps"):
        return {"type": "values", "values": [v]}
    if cat == "cfg":
        lo, hi = (1.0, 3.0) if v <= 1.5 else (v * 0.5, v * 1.5)
    elif cat == "denoise":
        lo, hi = (0.5, 1.0) if v >= 1 else (v - 0.2, min(1.0, v + 0.2))
    elif cat in ("lora_strength", "strength"):
        lo, hi = max(0.0, v - 0.5), v + 0.5
    elif v == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = sorted((v * 0.5, v * 1.5))
    out: dict[str, Any] = {"type": "linear" if integer else "continuous",
                           "min": _snap(lo, spec, integer), "max": _snap(hi, spec, integer)}
    step = spec.get("step")
    if integer:
        out["step"] = max(1, int(step) if isinstance(step, int | float) and step >= 1 else 1)
    elif isinstance(step, int | float) and step > 0 and cat != "lora_strength":
        out["step"] = step
    return out


def analyze(workflow: dict[str, Any], object_info: dict[str, Any] | None = None) -> list[Finding]:
    """Every literal input of every node (links skipped), in node order, with category and suggestion."""
    findings: list[Finding] = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            continue
        class_type = str(node.get("class_type"))
        spec_node = (object_info or {}).get(class_type)
        declared = {n: (k, o) for n, k, o, _r in input_specs(spec_node)} if isinstance(spec_node, dict) else {}
        title = str((node.get("_meta") or {}).get("title") or class_type)
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, dict | list):  # links ([node, slot]) and structured values
                continue
            spec_kind, opts = declared.get(name, (None, {}))
            kind = _kind(value, spec_kind)
            spec = {k: opts[k] for k in ("min", "max", "step") if isinstance(opts.get(k), int | float)}
            options = enum_values(spec_kind, opts) if spec_kind is not None else None
            if options:
                spec["options"] = list(options)
            cat = categorise(class_type, name, value, kind, opts)
            f = Finding(str(node_id), class_type, title, name, value, cat, kind, spec)
            f.suggestion = suggest(f)
            f.enabled = cat in ENABLED
            if cat == "resolution":
                f.notes.append(EXPENSIVE)
            elif cat == "text":
                f.notes.append("text prompt: not varied by default")
            elif cat == "file":
                f.notes.append("file reference: fixed unless you list alternatives")
            findings.append(f)
    _name(findings)
    return findings


def _name(findings: list[Finding]) -> None:
    """Parameter names: the input name (``lora_`` in front for LoRA strengths), ``_<node>`` when repeated."""
    def base(f: Finding) -> str:
        raw = f.input if (f.category != "lora_strength" or "lora" in f.input) else f"lora_{f.input}"
        return "".join(c if c.isalnum() else "_" for c in raw).strip("_") or "param"

    counts: dict[str, int] = {}
    for f in findings:
        counts[base(f)] = counts.get(base(f), 0) + 1
    for f in findings:
        b = base(f)
        suffix = "".join(c if c.isalnum() else "_" for c in f.node_id)
        f.name = b if counts[b] == 1 else f"{b}_{suffix}"
        if f.name[0].isdigit():
            f.name = f"p_{f.name}"


def _scalar(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def _short(v: Any, n: int = 60) -> str:
    text = _scalar(v)
    return text if len(text) <= n else text[: n - 1] + "…"


def template(findings: list[Finding], workflow_file: str, *, source_note: str = "") -> str:
    """The commented YAML batch config: the obvious candidates active, everything else commented out."""
    active = [f for f in findings if f.enabled]
    numeric = [f for f in active if f.suggestion.get("type") in ("continuous", "linear")][:3]
    pattern = "{run_id:04d}" + "".join(f"_{f.name}{{{f.name}:.2f}}" for f in numeric)
    lines = [
        "# comfy-worker batch config, written by `comfy-worker analyze`." + (f" {source_note}" if source_note else ""),
        "# Active: the obvious candidates (seeds, cfg, LoRA strengths). Uncomment others to vary them too.",
        "# Ranges start from the current value; [min..max step] from the server's /object_info where known.",
        f"workflow_file: {_scalar(workflow_file)}",
        "sampling_strategy: sobol      # sobol | lhs | grid | random | linear",
        "num_samples: 16               # sobol: a power of two (rounded up otherwise); not used by grid",
        "seeds_per_sample: 1           # render each point with this many seeds (needs a random_seed parameter)",
        "seed: 0                       # the sampling's own seed: the same config gives the same runs",
        "parameters:",
    ]
    if not active:
        lines.append("  {}    # nothing obvious to vary: uncomment parameters below (and delete this {})")
    for f in sorted(findings, key=lambda f: (not f.enabled, CATEGORIES.index(f.category))):
        rng = ""
        if "min" in f.spec or "max" in f.spec:
            rng = f" [{f.spec.get('min', '')}..{f.spec.get('max', '')}" + (
                f" step {f.spec['step']}" if "step" in f.spec else "") + "]"
        head = f"node {f.node_id} {f.class_type} ({f.title}) {f.input} = {_short(f.value)}  ·  {f.category}{rng}"
        block = [f"{f.name}:", f"  path: nodes.{f.node_id}.inputs.{f.input}"]
        for key in ("type", "min", "max", "step", "values"):
            if key in f.suggestion:
                block.append(f"  {key}: {_scalar(f.suggestion[key])}")
        prefix = "  " if f.enabled else "  # "
        lines.append(f"  # {head}")
        lines += [f"  # {note}" for note in f.notes]
        lines += [prefix + b for b in block]
    lines += [
        "output:",
        "  directory: output            # batches go to output/batch_<timestamp>/",
        f"  run_name_pattern: {_scalar(pattern)}",
        "resume:",
        "  enabled: true                # the same config resumes its latest batch directory",
        "  skip_existing: true          # runs already complete there are not rendered again",
    ]
    return "\n".join(lines) + "\n"


def table(findings: list[Finding]) -> str:
    """A plain listing of every finding, grouped by category."""
    out: list[str] = []
    for cat in CATEGORIES:
        group = [f for f in findings if f.category == cat]
        if not group:
            continue
        out.append(f"== {cat} ({len(group)}) ==")
        for f in group:
            flag = "*" if f.enabled else " "
            where = f"node {f.node_id:<8} {f.class_type:<28} {f.input:<18}"
            out.append(f" {flag} {f.name:<24} {where} {_short(f.value, 50)}")
    out.append("(* = active in the template)")
    return "\n".join(out) + "\n"


def relative_to(target: Path, start: Path) -> str:
    return os.path.relpath(target.resolve(), start.resolve())
