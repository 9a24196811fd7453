"""Chain profiles: which workflows a chain runs and, per role, which node ids and inputs to set.

A profile is YAML or JSON (shipped in ``comfy_worker/profiles/`` or loaded from a path)::

    name: wan22_vace_v2v
    base_workflow: wan22_vace_v2v.prompt.json      # relative to the profile file
    combine_workflow: wan22_vace_v2v.combine.json  # optional: omit to join with ffmpeg concat
    defaults: {frames_per_chunk: 101, overlap: 0, reference_offset: 10, max_retries: 3, retry_delay_s: 5}
    paths: {comfy_output_dir: /workspace/ComfyUI/output}
    optional_inputs: {WanVideoSampler: [samples, ...]}  # custom node inputs that may stay unconnected
    roles:                                              # base workflow
      frames: {node: "19", input: value}
      sampler: {node: "54", start_step: start_step, end_step: end_step}
    passes:
      high: {lora: ..., model: ..., steps: [0, 4], remove: ["341", ...]}
      low:  {lora: ..., model: ..., steps: [4, 8], remove: ["365", ...]}
    first_chunk: {remove: ["358", "359"]}               # no reference frame for chunk 1
    combine_roles: {new_segment: {node: "25", input: video, skip_input: skip_first_frames,
                                  cap_input: frame_load_cap}, ...}

``defaults`` are the profile's plan values; ``defaults.frames_per_chunk`` loses to a prompt file's or task's
``frames_per_chunk`` and to ``--frames-per-chunk``, and wins over the built-in 101 (see :func:`.dryrun.plan_for`).
The combine workflow's new-segment loader drops each segment's overlap (``skip_input``) and the frames a chunk
rendered past its share (``cap_input``, e.g. VHS ``frame_load_cap``: the last chunk of a total that is not 4k+1).

Node ids are strings; group sub-nodes keep ComfyUI's ``group:sub`` form (``"309:298"``).

A profile may instead name a graph builder (``builder: {name: wan22_i2v_chain, params: {...}}``): the builder
generates ``base_workflow``, ``roles``, ``passes``, ``first_chunk`` and ``optional_inputs`` (see
:data:`comfy_worker.builders.wan22.CHAIN_BUILDERS`); the YAML adds name, description, defaults and paths.
:func:`load_profile` validates the profile against its workflows: every error names the role, node id and
input, so a profile that does not match its workflow fails before anything is queued.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from comfy_worker.errors import ConfigError
from comfy_worker.pathsafe import contained, relative_problem

# role name → the keys (besides "node") it may carry; "input" is the main input to set.
BASE_ROLES: dict[str, tuple[str, ...]] = {
    "lora": ("input",),
    "model": ("input",),
    "positive_prompt": ("input",),
    "negative_prompt": ("input",),
    "frames": ("input",),
    "start_frame": ("input",),
    "input_video": ("input",),
    "seed": ("input",),
    "reference": ("input",),
    "sampler": ("start_step", "end_step"),
    "latent_save": ("folder", "subfolder", "filename", "prefix"),  # prefix: one filename_prefix (core SaveLatent)
    "latent_load": ("input", "path"),  # path: "folder" (default) or "file" (core LoadLatent takes the file)
    "decode": (),
    "video_out": ("input",),
    "last_frame": ("input",),
}
COMBINE_ROLES: dict[str, tuple[str, ...]] = {
    "new_segment": ("input", "skip_input", "cap_input"),
    "previous": ("input",),
    "join": ("previous_input", "new_input"),
    "writer": ("input",),
}
REQUIRED_BASE_ROLES = ("positive_prompt", "frames", "video_out")
# Inputs that must exist on the node (the others are set only when the node has them, e.g. step ranges).
_MUST_EXIST = {"input", "folder", "subfolder", "filename", "prefix", "previous_input", "new_input", "skip_input",
               "cap_input"}  # fmt: skip
TASK_PROFILE_SUFFIXES = (".yaml", ".yml")
# defaults key → (smallest value, whether a fraction is allowed); other keys are refused, naming these.
DEFAULT_KEYS: dict[str, tuple[float, bool]] = {
    "frames_per_chunk": (1, False),
    "overlap": (0, False),
    "reference_offset": (0, False),
    "max_retries": (0, False),
    "retry_delay_s": (0, True),
}
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ProfileError(ConfigError):
    """A chain profile that is malformed or does not match its workflows."""

    def __init__(self, source: str, problem: str, **details: Any) -> None:
        super().__init__(source, problem)
        self.details.update(details)


@dataclass(frozen=True)
class Role:
    node: str
    inputs: dict[str, str] = field(default_factory=dict)

    def input(self, key: str = "input") -> str | None:
        return self.inputs.get(key)


@dataclass(frozen=True)
class PassConfig:
    lora: str | None = None
    model: str | None = None
    steps: tuple[int, int] | None = None
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    base_workflow: dict[str, Any]
    combine_workflow: dict[str, Any] | None
    roles: dict[str, Role]
    combine_roles: dict[str, Role]
    passes: dict[str, PassConfig]
    first_chunk_remove: tuple[str, ...] = ()
    optional_inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def join_mode(self) -> str:
        return "progressive" if self.combine_workflow is not None else "concat"

    def workflow_copy(self, kind: str = "base") -> dict[str, Any]:
        wf = self.base_workflow if kind == "base" else self.combine_workflow
        if wf is None:
            raise ProfileError(self.source, f"profile {self.name!r} has no {kind} workflow")
        return copy.deepcopy(wf)


def shipped_profiles_dir() -> Path:
    return Path(str(resources.files("comfy_worker") / "profiles"))


def list_profiles() -> list[str]:
    return sorted(p.stem for p in shipped_profiles_dir().glob("*.yaml"))


def _read_structured(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(str(path), f"cannot be read: {exc.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ProfileError(str(path), f"is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None


def profile_names(profiles_dir: Path | None = None) -> list[str]:
    """The names a task may use: every shipped profile and every ``NAME.yaml`` / ``NAME.yml`` in
    ``profiles_dir`` (PROFILES_DIR). Read from the folders each time, so a profile added there is usable."""
    names = set(list_profiles())
    if profiles_dir is not None and profiles_dir.is_dir():
        names |= {p.stem for p in profiles_dir.iterdir() if p.suffix in TASK_PROFILE_SUFFIXES and p.is_file()}
    return sorted(names)


def resolve_task_profile(name: str, profiles_dir: Path | None = None) -> Path:
    """The profile file a task's ``profile`` names: ``profiles_dir/NAME.yaml`` (PROFILES_DIR wins, so an
    operator can replace a shipped profile), else the shipped ``NAME.yaml``. Never a path: absolute paths,
    separators, ``..`` and symlinks leading out of the folder are refused, naming the allowed names."""
    allowed = profile_names(profiles_dir)
    hint = "" if profiles_dir is not None else " (workers add their own with PROFILES_DIR)"

    def refuse(problem: str) -> ProfileError:
        return ProfileError("params.profile", f"{problem}; allowed: {', '.join(allowed)}{hint}", allowed=allowed)

    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in TASK_PROFILE_SUFFIXES else name
    if not _PROFILE_NAME.match(stem) or ".." in stem:
        raise refuse(f"{name!r} is not a profile name (a task names a profile, never a path)")
    folders = [d for d in (profiles_dir, shipped_profiles_dir()) if d is not None]
    for folder in folders:
        for suffix in TASK_PROFILE_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                if contained(candidate, [folder]) is None:
                    raise refuse(f"{name!r} leads out of {folder} through a symlink")
                return candidate.resolve()
    raise refuse(f"no profile named {name!r}")


def load_task_profile(name: str, profiles_dir: Path | None = None) -> Profile:
    """A task's profile by name (see :func:`resolve_task_profile`); its workflow files must sit in its folder."""
    path = resolve_task_profile(name, profiles_dir)
    return parse_profile(_read_structured(path), source=str(path), base_dir=path.parent, confine=True)


def resolve_profile_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") or p.is_file():
        if not p.is_file():
            raise ProfileError(str(p), "profile file not found")
        return p
    shipped = shipped_profiles_dir() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ProfileError(
            "profile",
            f"no shipped profile named {str(name_or_path)!r}; shipped: {', '.join(list_profiles())} "
            "(or pass a path to a .yaml/.json profile)",
        )
    return shipped


def _roles(source: str, raw: Any, allowed: dict[str, tuple[str, ...]], section: str) -> dict[str, Role]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProfileError(source, f"{section}: expected a mapping of role name to {{node, input}}")
    roles = {}
    for name, spec in raw.items():
        if name not in allowed:
            raise ProfileError(source, f"{section}.{name}: unknown role; known roles: {', '.join(allowed)}")
        if not isinstance(spec, dict) or "node" not in spec:
            raise ProfileError(source, f"{section}.{name}: expected a mapping with a 'node' id")
        extra = set(spec) - {"node", *allowed[name]}
        if extra:
            raise ProfileError(
                source,
                f"{section}.{name}: unknown keys {sorted(extra)}; allowed: node, {', '.join(allowed[name])}",
            )
        roles[name] = Role(str(spec["node"]), {k: str(v) for k, v in spec.items() if k != "node"})
    return roles


def _pass(source: str, name: str, raw: Any) -> PassConfig:
    if not isinstance(raw, dict):
        raise ProfileError(source, f"passes.{name}: expected a mapping (lora, model, steps, remove)")
    steps = raw.get("steps")
    if steps is not None:
        if not (isinstance(steps, list) and len(steps) == 2 and all(isinstance(s, int) for s in steps)):
            raise ProfileError(source, f"passes.{name}.steps: expected [start_step, end_step], got {steps!r}")
        steps = (steps[0], steps[1])
    return PassConfig(
        lora=raw.get("lora"),
        model=raw.get("model"),
        steps=steps,
        remove=tuple(str(n) for n in raw.get("remove") or ()),
    )


def parse_profile(data: Any, *, source: str, base_dir: Path | None = None, confine: bool = False) -> Profile:
    """Build and validate a profile from parsed YAML/JSON; workflow paths resolve against ``base_dir``
    (with ``confine``, they must stay inside it: relative, no ``..``, no symlink out)."""
    if not isinstance(data, dict):
        raise ProfileError(source, "expected a mapping at the top level")
    base_dir = base_dir or Path.cwd()
    if "builder" in data:
        data = {**_from_builder(source, data["builder"]), **{k: v for k, v in data.items() if k != "builder"}}

    def workflow(key: str) -> dict[str, Any] | None:
        ref = data.get(key)
        if ref is None:
            return None
        if isinstance(ref, dict):
            return ref
        if confine and (relative_problem(str(ref)) or contained(base_dir / str(ref), [base_dir]) is None):
            raise ProfileError(source, f"{key}: {ref} must be a file next to the profile (relative, no '..')")
        wf = _read_structured((base_dir / str(ref)) if not Path(str(ref)).is_absolute() else Path(str(ref)))
        if not isinstance(wf, dict) or not wf:
            raise ProfileError(source, f"{key}: {ref} is not an API-format workflow object")
        if "nodes" in wf and "links" in wf:
            raise ProfileError(source, f"{key}: {ref} is in UI format; export it with 'Save (API Format)'")
        return wf

    base = workflow("base_workflow")
    if base is None:
        raise ProfileError(source, "base_workflow: required (path to an API-format workflow JSON)")
    passes_raw = data.get("passes") or {}
    if set(passes_raw) - {"high", "low"}:
        raise ProfileError(source, f"passes: only 'high' and 'low' are known, got {sorted(passes_raw)}")
    profile = Profile(
        name=str(data.get("name") or Path(source).stem),
        source=source,
        description=str(data.get("description") or ""),
        base_workflow=base,
        combine_workflow=workflow("combine_workflow"),
        roles=_roles(source, data.get("roles"), BASE_ROLES, "roles"),
        combine_roles=_roles(source, data.get("combine_roles"), COMBINE_ROLES, "combine_roles"),
        passes={k: _pass(source, k, v) for k, v in passes_raw.items()},
        first_chunk_remove=tuple(str(n) for n in (data.get("first_chunk") or {}).get("remove") or ()),
        optional_inputs={str(k): tuple(v) for k, v in (data.get("optional_inputs") or {}).items()},
        defaults=_defaults(source, data.get("defaults")),
        paths={str(k): str(v) for k, v in (data.get("paths") or {}).items()},
    )
    validate_profile(profile)
    return profile


def _defaults(source: str, raw: Any) -> dict[str, Any]:
    """``defaults`` checked: known keys only, each a number of the right kind (so a typo or a quoted value fails
    when the profile loads, not as a silently ignored setting)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProfileError(source, f"defaults: expected a mapping of {', '.join(DEFAULT_KEYS)}")
    for key, value in raw.items():
        if key not in DEFAULT_KEYS:
            raise ProfileError(source, f"defaults.{key}: unknown key; known: {', '.join(DEFAULT_KEYS)}", field=key)
        minimum, fraction = DEFAULT_KEYS[key]
        kinds = (int, float) if fraction else (int,)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            kind = "a number" if fraction else "an integer"
            raise ProfileError(source, f"defaults.{key}: expected {kind} >= {minimum:g}, got {value!r}", field=key)
    return dict(raw)


def _from_builder(source: str, spec: Any) -> dict[str, Any]:
    from comfy_worker.builders.wan22 import CHAIN_BUILDERS
    from comfy_worker.errors import InputRejected

    if not isinstance(spec, dict) or spec.get("name") not in CHAIN_BUILDERS:
        raise ProfileError(source, f"builder: expected {{name: one of {', '.join(CHAIN_BUILDERS)}, params: {{...}}}}")
    try:
        return CHAIN_BUILDERS[spec["name"]](spec.get("params") or {})
    except InputRejected as exc:
        raise ProfileError(source, f"builder.params: {exc}") from None


def load_profile(name_or_path: str | Path = "wan22_vace_v2v") -> Profile:
    """Load a shipped profile by name, or a profile file by path."""
    path = resolve_profile_path(name_or_path)
    return parse_profile(_read_structured(path), source=str(path), base_dir=path.parent)


def _check_role(profile: Profile, section: str, name: str, role: Role, wf: dict[str, Any]) -> None:
    node = wf.get(role.node)
    if node is None:
        raise ProfileError(
            profile.source,
            f"{section}.{name}: node {role.node} is not in the workflow",
            role=name,
            node_id=role.node,
        )
    inputs = node.get("inputs") or {}
    for key, input_name in role.inputs.items():
        if key in _MUST_EXIST and input_name not in inputs:
            raise ProfileError(
                profile.source,
                f"{section}.{name}: node {role.node} ({node.get('class_type')}) has no input {input_name!r}",
                role=name,
                node_id=role.node,
                input=input_name,
            )


def validate_profile(profile: Profile) -> None:
    """Every referenced node (and set input) exists in its workflow; errors name role, node id and input."""
    for name in REQUIRED_BASE_ROLES:
        if name not in profile.roles:
            raise ProfileError(profile.source, f"roles.{name}: required role missing", role=name)
    for name, role in profile.roles.items():
        _check_role(profile, "roles", name, role, profile.base_workflow)
    for pass_name, cfg in profile.passes.items():
        for node_id in cfg.remove:
            if node_id not in profile.base_workflow:
                raise ProfileError(
                    profile.source,
                    f"passes.{pass_name}.remove: node {node_id} is not in the base workflow",
                    role=pass_name,
                    node_id=node_id,
                )
        for needs, role in (("lora", "lora"), ("model", "model"), ("steps", "sampler")):
            if getattr(cfg, needs) is not None and role not in profile.roles:
                raise ProfileError(profile.source, f"passes.{pass_name}.{needs}: needs roles.{role}", role=role)
    for node_id in profile.first_chunk_remove:
        if node_id not in profile.base_workflow:
            raise ProfileError(
                profile.source,
                f"first_chunk.remove: node {node_id} is not in the base workflow",
                node_id=node_id,
            )
    if profile.combine_workflow is not None:
        for name in ("new_segment", "writer"):
            if name not in profile.combine_roles:
                raise ProfileError(profile.source, f"combine_roles.{name}: required with a combine_workflow")
        for name, role in profile.combine_roles.items():
            _check_role(profile, "combine_roles", name, role, profile.combine_workflow)
