"""Graph-aware edits on API-format ComfyUI workflows (``{node_id: {class_type, inputs, _meta}}``).

A link is an input value ``[source_node_id, output_index]``. Edits keep the graph whole: deleting nodes also
removes the inputs that referenced them when those inputs are optional, and refuses (naming the node and the
input) when a required input would be left dangling; bypassing a node reroutes its consumers to one of its
own inputs. Required-ness comes from ``/object_info`` for the node classes it knows, otherwise from a
profile's ``optional_inputs`` table; an input known to neither counts as required (the safe choice).

All edit functions change ``workflow`` in place and return the modifications they made as JSON-serialisable
dicts (``{"op": ..., "node": ..., ...}``); callers copy the base workflow first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from comfy_worker.engine.workflow import problems as workflow_problems
from comfy_worker.errors import WorkflowInvalid

Workflow = dict[str, dict[str, Any]]
Link = tuple[str, int]
OptionalInputs = Mapping[str, Iterable[str]]


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _node(workflow: Workflow, node_id: str) -> dict[str, Any]:
    node = workflow.get(str(node_id))
    if not isinstance(node, dict):
        raise WorkflowInvalid(f"node {node_id}: not in the workflow", details={"node_id": str(node_id)})
    return node


def links(workflow: Workflow) -> list[tuple[str, str, Link]]:
    """Every link as (consumer node id, input name, (source node id, output index))."""
    out: list[tuple[str, str, Link]] = []
    for node_id, node in workflow.items():
        for name, value in (node.get("inputs") or {}).items():
            if is_link(value):
                out.append((node_id, name, (value[0], value[1])))
    return out


def find_consumers(workflow: Workflow, node_id: str, output: int | None = None) -> list[tuple[str, str, int]]:
    """(consumer id, input name, output index) for each input linked to ``node_id`` (one output or all)."""
    return [
        (consumer, name, src[1])
        for consumer, name, src in links(workflow)
        if src[0] == str(node_id) and (output is None or src[1] == output)
    ]


def is_required(
    class_type: str,
    input_name: str,
    object_info: Mapping[str, Any] | None = None,
    optional_inputs: OptionalInputs | None = None,
) -> bool:
    """Whether a node class needs ``input_name``: object_info decides for classes it knows; otherwise the
    profile's optional_inputs table; unknown inputs count as required."""
    info = (object_info or {}).get(class_type)
    if isinstance(info, dict):
        return input_name in ((info.get("input") or {}).get("required") or {})
    return input_name not in set((optional_inputs or {}).get(class_type, ()))


def set_input(workflow: Workflow, node_id: str, name: str, value: Any, *, role: str | None = None) -> dict[str, Any]:
    """Set one input (a literal or a link). Setting a link checks that its source node exists."""
    node = _node(workflow, node_id)
    if is_link(value) and value[0] not in workflow:
        raise WorkflowInvalid(
            f"node {node_id}: input {name!r} would link to missing node {value[0]}",
            details={"node_id": str(node_id), "input": name},
        )
    inputs = node.setdefault("inputs", {})
    previous = inputs.get(name)
    inputs[name] = value
    mod: dict[str, Any] = {"op": "set", "node": str(node_id), "input": name, "value": value}
    if previous != value and is_link(previous):
        mod["replaced_link"] = list(previous)
    if role:
        mod["role"] = role
    return mod


def delete_nodes(
    workflow: Workflow,
    node_ids: Iterable[str],
    *,
    object_info: Mapping[str, Any] | None = None,
    optional_inputs: OptionalInputs | None = None,
    cascade: bool = False,
    role: str | None = None,
) -> list[dict[str, Any]]:
    """Delete nodes. Optional inputs that referenced them are removed; a required one is an error naming the
    consumer node and input, unless ``cascade`` (then the consumer is deleted too, transitively)."""
    doomed = {str(n) for n in node_ids}
    for n in sorted(doomed):
        _node(workflow, n)
    mods: list[dict[str, Any]] = []
    while True:
        dangling = [(c, name, src) for c, name, src in links(workflow) if src[0] in doomed and c not in doomed]
        required = [
            (c, name, src)
            for c, name, src in dangling
            if is_required(workflow[c].get("class_type", ""), name, object_info, optional_inputs)
        ]
        if not required:
            break
        if not cascade:
            c, name, src = required[0]
            raise WorkflowInvalid(
                f"node {c}: deleting node {src[0]} would leave required input {name!r} "
                f"({workflow[c].get('class_type')}) dangling; delete or reroute node {c} as well",
                details={"node_id": c, "input": name, "deleted_node": src[0]},
            )
        doomed |= {c for c, _, _ in required}
    for c, name, src in links(workflow):
        if src[0] in doomed and c not in doomed:
            del workflow[c]["inputs"][name]
            mods.append({"op": "drop_input", "node": c, "input": name, "was_link": [src[0], src[1]]})
    for n in sorted(doomed, key=_sort_key):
        mod = {"op": "remove", "node": n, "class_type": workflow[n].get("class_type")}
        if role:
            mod["role"] = role
        mods.append(mod)
        del workflow[n]
    return mods


def reroute(workflow: Workflow, old: Link, new: Link) -> list[dict[str, Any]]:
    """Point every input linked to ``old`` (node, output) at ``new`` instead."""
    if str(new[0]) not in workflow:
        raise WorkflowInvalid(f"node {new[0]}: reroute target not in the workflow", details={"node_id": new[0]})
    mods = []
    for consumer, name, src in links(workflow):
        if src == (str(old[0]), old[1]):
            workflow[consumer]["inputs"][name] = [str(new[0]), new[1]]
            mods.append(
                {
                    "op": "reroute",
                    "node": consumer,
                    "input": name,
                    "from": [src[0], src[1]],
                    "to": [str(new[0]), new[1]],
                }
            )
    return mods


def bypass_node(
    workflow: Workflow,
    node_id: str,
    through_input: str,
    *,
    output: int = 0,
    object_info: Mapping[str, Any] | None = None,
    optional_inputs: OptionalInputs | None = None,
) -> list[dict[str, Any]]:
    """Remove ``node_id`` and connect the consumers of its ``output`` to what its ``through_input`` is linked
    to (like ComfyUI's bypass). Consumers of its other outputs follow :func:`delete_nodes` rules."""
    node = _node(workflow, node_id)
    source = (node.get("inputs") or {}).get(through_input)
    if not is_link(source):
        raise WorkflowInvalid(
            f"node {node_id}: cannot bypass through input {through_input!r}: it is not linked",
            details={"node_id": str(node_id), "input": through_input},
        )
    mods = [{"op": "bypass", "node": str(node_id), "through": through_input}]
    mods += reroute(workflow, (str(node_id), output), (source[0], source[1]))
    mods += delete_nodes(workflow, [node_id], object_info=object_info, optional_inputs=optional_inputs)
    return mods


def _sort_key(node_id: str) -> tuple[int, ...]:
    parts = []
    for p in node_id.split(":"):
        parts.append(int(p) if p.isdigit() else 1 << 30)
    return tuple(parts)


def dangling_links(workflow: Workflow, object_info: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Links to missing nodes, or to an output index the source class lacks (when object_info knows it)."""
    problems = []
    for consumer, name, (src, slot) in links(workflow):
        if src not in workflow:
            problems.append({"node_id": consumer, "input": name, "problem": f"links to missing node {src}"})
            continue
        info = (object_info or {}).get(workflow[src].get("class_type", ""))
        if isinstance(info, dict) and not 0 <= slot < len(info.get("output") or []):
            problems.append(
                {
                    "node_id": consumer,
                    "input": name,
                    "problem": f"links to output {slot} of node {src}, "
                    f"which has {len(info.get('output') or [])} outputs",
                }
            )
    return problems


def validate_offline(workflow: Workflow, object_info: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The engine's checks (node shape, links, required inputs, enum values, ranges) for node types object_info
    knows; custom types it does not list are taken on trust. Returns the problems (empty when ok), each with
    ``node_id``, ``input`` and ``problem``."""
    found = workflow_problems(workflow, object_info or {}, unknown_nodes="skip")
    return [{"node_id": p["node_id"], "input": p["input"], "problem": p["message"]} for p in found]


def check_workflow(workflow: Workflow, object_info: Mapping[str, Any] | None = None, *, label: str = "") -> None:
    """Raise WorkflowInvalid (details['node_errors']) when :func:`validate_offline` finds problems."""
    problems = validate_offline(workflow, object_info)
    if problems:
        first = problems[0]
        where = f"node {first.get('node_id')}" + (f" input {first['input']!r}" if first.get("input") else "")
        raise WorkflowInvalid(
            f"{label + ': ' if label else ''}{where}: {first['problem']} ({len(problems)} problem(s))",
            details={"node_errors": problems},
        )
