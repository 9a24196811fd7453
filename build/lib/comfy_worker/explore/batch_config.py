"""The batch config (YAML), checked key by key against the workflow before anything is submitted.

::

    workflow_file: wan22_t2v_api.json          # relative to this file
    sampling_strategy: sobol                   # sobol | lhs | grid | random | linear
    num_samples: 16                            # not for grid
    seeds_per_sample: 2
    seed: 0                                    # the sampling's own seed (reproducible plans)
    parameters:
      lora_strength: {path: nodes.57.inputs.strength_model, type: continuous, min: 0.4, max: 1.2}
      cfg:           {path: nodes.3.inputs.cfg, type: linear, min: 3, max: 7, step: 0.5}
      sampler:       {path: nodes.3.inputs.sampler_name, type: values, values: [euler, uni_pc]}
      seed:          {path: [nodes.3.inputs.noise_seed, nodes.4.inputs.noise_seed], type: random_seed}
    output: {directory: output, run_name_pattern: "{run_id:04d}_lora{lora_strength:.1f}"}
    resume: {enabled: true, skip_existing: true}

Every error is a :class:`~comfy_worker.errors.BatchConfigInvalid` naming the key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from comfy_worker.engine import problems
from comfy_worker.errors import BatchConfigInvalid, ComfyWorkerError
from comfy_worker.explore.source import load_workflow
from comfy_worker.explore.space import STRATEGIES, TYPES, InputPath, Parameter, Plan, name_runs, plan

TOP_KEYS = ("workflow_file", "sampling_strategy", "num_samples", "seeds_per_sample", "seed", "parameters",
            "output", "resume", "description")
PARAM_KEYS = ("path", "type", "min", "max", "step", "values", "description")
OUTPUT_KEYS = ("directory", "run_name_pattern")
RESUME_KEYS = ("enabled", "skip_existing")
MAX_RUNS = 10_000


@dataclass
class BatchConfig:
    source: Path
    raw: dict[str, Any]
    workflow_file: Path
    workflow: dict[str, Any]
    strategy: str
    num_samples: int
    seeds_per_sample: int
    seed: int
    parameters: list[Parameter]
    output_dir: Path
    run_name_pattern: str
    resume: bool
    skip_existing: bool

    @property
    def key(self) -> str:
        """What identifies the batch's runs: the workflow and every setting that changes a run (not the output
        directory or resume switches). A rerun with the same key resumes the same batch."""
        ident = {
            "workflow": self.workflow,
            "strategy": self.strategy,
            "num_samples": self.num_samples,
            "seeds_per_sample": self.seeds_per_sample,
            "seed": self.seed,
            "parameters": self.raw.get("parameters"),
            "pattern": self.run_name_pattern,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def plan(self) -> Plan:
        p = plan(self.strategy, self.parameters, num_samples=self.num_samples,
                 seeds_per_sample=self.seeds_per_sample, seed=self.seed)
        if len(p.runs) > MAX_RUNS:
            raise BatchConfigInvalid("parameters", f"the plan has {len(p.runs)} runs, more than {MAX_RUNS}; "
                                     "split it into several batches (fewer samples, or fewer grid values)")
        if not p.runs:
            raise BatchConfigInvalid("parameters", "the plan has no runs (an empty grid?)")
        p.runs = name_runs(p.runs, self.run_name_pattern)
        return p

    def workflow_for(self, values: dict[str, Any]) -> dict[str, Any]:
        """The workflow with one run's values written into their inputs."""
        wf = copy.deepcopy(self.workflow)
        for param in self.parameters:
            for path in param.paths:
                wf[path.node_id]["inputs"][path.input] = values[param.name]
        return wf


def _close(word: str, options: tuple[str, ...] | list[str]) -> str:
    m = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _mapping(value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BatchConfigInvalid(key, f"must be a mapping, got {type(value).__name__}")
    for k in value:
        if k not in allowed:
            raise BatchConfigInvalid(f"{key}.{k}" if key else str(k),
                                     f"unknown key{_close(str(k), allowed)}; known: {', '.join(allowed)}")
    return value


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BatchConfigInvalid(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise BatchConfigInvalid(key, f"must be >= {minimum}, got {value}")
    return value


def _number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BatchConfigInvalid(key, f"must be a number, got {value!r}")
    return value


def _path(text: Any, key: str, workflow: dict[str, Any]) -> InputPath:
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) == 3:  # 57.inputs.cfg
        parts = ["nodes", *parts]
    if len(parts) != 4 or parts[0] != "nodes" or parts[2] != "inputs":
        raise BatchConfigInvalid(key, f"{text!r} is not a path like nodes.57.inputs.cfg")
    node_id, name = parts[1], parts[3]
    node = workflow.get(node_id)
    if not isinstance(node, dict):
        ids = sorted(workflow, key=lambda s: (len(s), s))
        raise BatchConfigInvalid(
            key, f"{text!r} names node {node_id}, which is not in the workflow{_close(node_id, ids)}; "
            f"nodes: {', '.join(ids[:30])}"
        )
    inputs = node.get("inputs") or {}
    if name not in inputs:
        names = list(inputs)
        raise BatchConfigInvalid(
            key, f"node {node_id} ({node['class_type']}) has no input {name!r}{_close(name, names)}; "
            f"inputs: {', '.join(names)}"
        )
    value = inputs[name]
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        raise BatchConfigInvalid(
            key, f"node {node_id} ({node['class_type']}) input {name!r} is connected to node {value[0]}; "
            "vary a literal input (e.g. the source node's)"
        )
    return InputPath(node_id, name)


def parse_parameter(name: str, spec: Any, workflow: dict[str, Any]) -> Parameter:
    key = f"parameters.{name}"
    if not name.isidentifier():
        raise BatchConfigInvalid(key, "parameter names must be identifiers (letters, digits, _) to be usable in "
                                 "output.run_name_pattern")
    spec = _mapping(spec, key, PARAM_KEYS)
    kind = spec.get("type")
    if kind not in TYPES:
        raise BatchConfigInvalid(f"{key}.type", f"unknown type {kind!r}{_close(str(kind), TYPES)}; "
                                 f"use one of {', '.join(TYPES)}")
    raw_paths = spec.get("path")
    if raw_paths is None:
        raise BatchConfigInvalid(f"{key}.path", "missing: name the input, e.g. nodes.3.inputs.cfg")
    listed = raw_paths if isinstance(raw_paths, list) else [raw_paths]
    if not listed:
        raise BatchConfigInvalid(f"{key}.path", "is an empty list")
    paths = tuple(_path(p, f"{key}.path", workflow) for p in listed)
    originals = [workflow[p.node_id]["inputs"][p.input] for p in paths]
    integer = all(isinstance(v, int) and not isinstance(v, bool) for v in originals)
    lo, hi, step = (_number(spec.get(k), f"{key}.{k}") for k in ("min", "max", "step"))
    values = spec.get("values")
    if kind == "values":
        if not isinstance(values, list) or not values:
            raise BatchConfigInvalid(f"{key}.values", "a values parameter needs a non-empty list of values")
        return Parameter(name, kind, paths, values=tuple(values))
    if values is not None:
        raise BatchConfigInvalid(f"{key}.values", f"only type: values takes a list (this one is {kind})")
    if kind == "random_seed":
        if lo is not None and hi is not None and lo > hi:
            raise BatchConfigInvalid(f"{key}.min", f"min {lo} is greater than max {hi}")
        return Parameter(name, kind, paths, lo, hi, integer=True)
    for k, v in (("min", lo), ("max", hi)):
        if v is None:
            raise BatchConfigInvalid(f"{key}.{k}", f"missing: a {kind} parameter needs min and max")
    assert lo is not None and hi is not None
    if lo > hi:
        raise BatchConfigInvalid(f"{key}.min", f"min {lo} is greater than max {hi}")
    if kind == "linear" and step is None:
        raise BatchConfigInvalid(f"{key}.step", "missing: a linear parameter needs a step")
    if step is not None and step <= 0:
        raise BatchConfigInvalid(f"{key}.step", f"must be > 0, got {step}")
    non_numeric = [v for v in originals if isinstance(v, bool) or not isinstance(v, int | float)]
    if non_numeric:
        raise BatchConfigInvalid(f"{key}.type", f"{kind} needs a numeric input, but {paths[0]} holds "
                                 f"{non_numeric[0]!r}; use type: values")
    return Parameter(name, kind, paths, lo, hi, step, integer=integer)


def load_config(path: Path, *, object_info: dict[str, Any] | None = None, out_root: Path | None = None) -> BatchConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BatchConfigInvalid(str(path), "the batch config file does not exist") from None
    except yaml.YAMLError as exc:
        raise BatchConfigInvalid(str(path), f"is not valid YAML: {exc}") from None
    return parse_config(raw, path, object_info=object_info, out_root=out_root)


def parse_config(raw: Any, source: Path, *, object_info: dict[str, Any] | None = None,
                 out_root: Path | None = None) -> BatchConfig:
    raw = _mapping(raw, "", TOP_KEYS)
    if "workflow_file" not in raw or not isinstance(raw["workflow_file"], str):
        raise BatchConfigInvalid("workflow_file", "missing: name the workflow JSON (relative to the config file)")
    wf_path = (source.parent / raw["workflow_file"]).resolve()
    if not wf_path.is_file():
        raise BatchConfigInvalid("workflow_file", f"{wf_path} does not exist")
    try:
        workflow, _converted = load_workflow(wf_path, object_info)
    except ComfyWorkerError as exc:
        raise BatchConfigInvalid("workflow_file", str(exc)) from exc
    strategy = raw.get("sampling_strategy", "sobol")
    if strategy not in STRATEGIES:
        raise BatchConfigInvalid("sampling_strategy", f"unknown strategy {strategy!r}"
                                 f"{_close(str(strategy), STRATEGIES)}; use one of {', '.join(STRATEGIES)}")
    if strategy != "grid" and "num_samples" not in raw:
        raise BatchConfigInvalid("num_samples", f"missing: how many points {strategy} should pick")
    num_samples = _int(raw.get("num_samples", 1), "num_samples", 1)
    seeds_per_sample = _int(raw.get("seeds_per_sample", 1), "seeds_per_sample", 1)
    seed = _int(raw.get("seed", 0), "seed", 0)
    params_raw = _mapping(raw.get("parameters"), "parameters", tuple(raw.get("parameters") or ()))
    if not params_raw:
        raise BatchConfigInvalid("parameters", "no parameters to vary: add at least one (see `comfy-worker analyze`)")
    parameters = [parse_parameter(str(n), s, workflow) for n, s in params_raw.items()]
    if seeds_per_sample > 1 and all(p.is_axis for p in parameters):
        raise BatchConfigInvalid("seeds_per_sample", f"is {seeds_per_sample} but no parameter has type random_seed; "
                                 "add one (the seed input of your sampler) or set seeds_per_sample: 1")
    claimed: dict[InputPath, str] = {}
    for p in parameters:
        for ip in p.paths:
            if ip in claimed:
                raise BatchConfigInvalid(f"parameters.{p.name}.path", f"{ip} is also set by parameter {claimed[ip]}")
            claimed[ip] = p.name
    output = _mapping(raw.get("output"), "output", OUTPUT_KEYS)
    resume = _mapping(raw.get("resume"), "resume", RESUME_KEYS)
    out_dir = Path(output.get("directory", "output"))
    if not out_dir.is_absolute():
        out_dir = (out_root or Path.cwd()) / out_dir
    cfg = BatchConfig(
        source=source, raw=raw, workflow_file=wf_path, workflow=workflow, strategy=strategy,
        num_samples=num_samples, seeds_per_sample=seeds_per_sample, seed=seed, parameters=parameters,
        output_dir=out_dir, run_name_pattern=str(output.get("run_name_pattern", "{run_id:04d}")),
        resume=bool(resume.get("enabled", True)), skip_existing=bool(resume.get("skip_existing", True)),
    )
    if object_info is not None:
        check_against_server(cfg, object_info)
    return cfg


def check_against_server(cfg: BatchConfig, object_info: dict[str, Any]) -> None:
    """Every value the plan will send, checked against the server's min / max / allowed values."""
    plan_ = cfg.plan()
    for run in plan_.runs:
        wf = cfg.workflow_for(run.values)
        for prob in problems(wf, object_info, unknown_nodes="skip"):
            for p in cfg.parameters:
                if any(ip.node_id == prob["node_id"] and ip.input == prob["input"] for ip in p.paths):
                    raise BatchConfigInvalid(f"parameters.{p.name}", f"run {run.run_id} would send "
                                             f"{run.values[p.name]!r}: {prob['message']}")
