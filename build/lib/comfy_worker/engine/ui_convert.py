"""UI-format workflow (what ComfyUI's "Save" / "Export" writes) → API format (what ``/prompt`` takes). Pure.

It follows what the current frontend does when it queues a graph (``graphToPrompt``):

* **Subgraphs** (``definitions.subgraphs``) are flattened. An inner node's id becomes ``"<instance id>:<node id>"``
  (nested: ``"12:34:56"``). A link from the subgraph's input node resolves to whatever feeds the instance's input
  of the same name outside; an unconnected instance input takes the instance's promoted widget value
  (``widgets_values``, one per promoted input), else the inner node's own widget value.
* **Reroutes** and **PrimitiveNode**s are resolved away (a primitive's value is written into its consumers).
* **Muted** nodes (mode 2) are dropped, and so are inputs that lead to them; a muted subgraph drops its inner nodes.
* **Bypassed** nodes (mode 4) pass through: a consumer of a bypassed node's output is linked to what feeds the
  node's input of the same type (same slot first, then the first input of exactly that type, then any compatible
  one), as ComfyUI does; a bypassed subgraph passes through the same way and its inner nodes are dropped.
* Notes are dropped. A node type the given ``object_info`` lacks is an error naming the node and the reason:
  a core node newer than the server ("update ComfyUI"), or a custom pack that is not installed.

Everything that cannot be converted is collected and raised at once as :class:`WorkflowInvalid`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_worker.engine.nodespec import API_FORMAT_ADVICE, input_specs, is_widget
from comfy_worker.errors import WorkflowInvalid

MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
VIRTUAL_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


@dataclass
class _Link:
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: Any = "*"


@dataclass
class _Scope:
    """One graph level: the root graph, or one instance of a subgraph (its definition seen from that instance)."""

    nodes: dict[int, dict[str, Any]]
    links: dict[int, _Link]
    path: tuple[str, ...] = ()
    definition: dict[str, Any] | None = None  # the subgraph definition (None at the root)
    instance: dict[str, Any] | None = None  # the instance node in the parent scope
    parent: _Scope | None = None
    promoted: dict[str, Any] = field(default_factory=dict)  # subgraph input name → instance widget value

    def exec_id(self, node_id: Any) -> str:
        return ":".join((*self.path, str(node_id)))


def _links(raw: Any) -> dict[int, _Link]:
    out: dict[int, _Link] = {}
    for link in raw or []:
        if isinstance(link, list) and len(link) >= 5:
            kind = link[5] if len(link) > 5 else "*"
            out[int(link[0])] = _Link(int(link[1]), int(link[2]), int(link[3]), int(link[4]), kind)
        elif isinstance(link, dict) and "id" in link:
            out[int(link["id"])] = _Link(
                int(link["origin_id"]),
                int(link["origin_slot"]),
                int(link["target_id"]),
                int(link["target_slot"]),
                link.get("type", "*"),
            )
    return out


def _nodes(raw: Any) -> dict[int, dict[str, Any]]:
    return {int(n["id"]): n for n in raw or [] if isinstance(n, dict) and "id" in n}


def _types(value: Any) -> set[str]:
    return {t.strip() for t in str(value or "*").split(",")}


def _compatible(a: Any, b: Any) -> bool:
    """litegraph's isValidConnection: '*' or '' matches anything; comma lists match on any common type."""
    ta, tb = _types(a), _types(b)
    return bool({"*", ""} & (ta | tb)) or bool(ta & tb)


def _title(node: Mapping[str, Any]) -> str:
    return str(node.get("title") or node.get("type"))


class _Converter:
    def __init__(self, wf: Mapping[str, Any], object_info: Mapping[str, Any], server: str) -> None:
        self.object_info = object_info
        self.server = server
        defs = wf.get("definitions") if isinstance(wf.get("definitions"), dict) else {}
        self.subgraphs: dict[str, dict[str, Any]] = {
            str(s["id"]): s for s in (defs or {}).get("subgraphs") or [] if isinstance(s, dict) and "id" in s
        }
        self.problems: list[str] = []
        self.root = _Scope(_nodes(wf.get("nodes")), _links(wf.get("links")))
        self._scopes: dict[tuple[str, ...], _Scope] = {}

    # --- scopes -------------------------------------------------------------------------------------------

    def child_scope(self, scope: _Scope, instance: dict[str, Any]) -> _Scope:
        key = (*scope.path, str(instance["id"]))
        if key not in self._scopes:
            self._scopes[key] = self._new_scope(scope, instance)
        return self._scopes[key]

    def _new_scope(self, scope: _Scope, instance: dict[str, Any]) -> _Scope:
        definition = self.subgraphs[str(instance["type"])]
        child = _Scope(
            _nodes(definition.get("nodes")),
            _links(definition.get("links")),
            (*scope.path, str(instance["id"])),
            definition,
            instance,
            scope,
        )
        child.promoted = self._promoted_values(child)
        return child

    def _promoted_values(self, child: _Scope) -> dict[str, Any]:
        """Values of the instance's promoted widgets, by subgraph input name (see the module docstring)."""
        assert child.definition is not None and child.instance is not None
        values = child.instance.get("widgets_values")
        if isinstance(values, dict):
            return dict(values)
        if not isinstance(values, list) or not values:
            return {}
        promoted: list[tuple[str, bool]] = []  # (input name, has a control_after_generate companion)
        for sub_input in child.definition.get("inputs") or []:
            for link_id in sub_input.get("linkIds") or []:
                link = child.links.get(int(link_id))
                target = child.nodes.get(link.target_id) if link else None
                slots = (target or {}).get("inputs") or []
                slot = slots[link.target_slot] if link and link.target_slot < len(slots) else None
                if isinstance(slot, dict) and slot.get("widget"):
                    promoted.append((str(sub_input.get("name")), self._has_control(target, slot)))
                    break
        extra = len(values) > len(promoted)
        out: dict[str, Any] = {}
        i = 0
        for name, control in promoted:
            if i >= len(values):
                break
            out[name] = values[i]
            i += 1
            if extra and control and i < len(values) and values[i] in CONTROL_VALUES:
                i += 1
        return out

    def _has_control(self, node: Mapping[str, Any] | None, slot: Mapping[str, Any]) -> bool:
        spec = self.object_info.get(str((node or {}).get("type")))
        if not isinstance(spec, dict):
            return False
        name = (slot.get("widget") or {}).get("name") or slot.get("name")
        for section in ("required", "optional"):
            raw = ((spec.get("input") or {}).get(section) or {}).get(name)
            if isinstance(raw, list | tuple) and len(raw) > 1 and isinstance(raw[1], dict):
                return bool(raw[1].get("control_after_generate")) or name in ("seed", "noise_seed")
        return False

    # --- link resolution ----------------------------------------------------------------------------------

    def resolve_input(self, scope: _Scope, node: Mapping[str, Any], slot_index: int, visited: set[str]) -> Any:
        """What feeds input ``slot_index`` of ``node``: ("link", exec_id, slot), ("value", v), or None."""
        key = f"{scope.exec_id(node['id'])}[I]{slot_index}"
        if key in visited:
            self.problems.append(f"node {scope.exec_id(node['id'])} ({_title(node)}): its inputs form a cycle")
            return None
        visited.add(key)
        slots = node.get("inputs") or []
        link_id = slots[slot_index].get("link") if slot_index < len(slots) else None
        if link_id is None:
            return None
        link = scope.links.get(int(link_id))
        if link is None:
            self.problems.append(
                f"node {scope.exec_id(node['id'])} ({_title(node)}): input {slots[slot_index].get('name')!r} uses "
                f"link {link_id}, which the export does not contain (a damaged file?)"
            )
            return None
        if link.origin_id == SUBGRAPH_INPUT:
            return self._from_subgraph_input(scope, link.origin_slot, visited)
        origin = scope.nodes.get(link.origin_id)
        if origin is None:
            self.problems.append(
                f"node {scope.exec_id(node['id'])} ({_title(node)}): input {slots[slot_index].get('name')!r} comes "
                f"from node {scope.exec_id(link.origin_id)}, which the export does not contain"
            )
            return None
        return self.resolve_output(scope, origin, link.origin_slot, slots[slot_index].get("type", link.type), visited)

    def _from_subgraph_input(self, scope: _Scope, index: int, visited: set[str]) -> Any:
        assert scope.definition is not None and scope.instance is not None and scope.parent is not None
        sub_inputs = scope.definition.get("inputs") or []
        if index >= len(sub_inputs):
            self.problems.append(f"subgraph {scope.definition.get('name')!r}: input slot {index} does not exist")
            return None
        name = str(sub_inputs[index].get("name"))
        outer = scope.instance.get("inputs") or []
        for i, slot in enumerate(outer):
            if isinstance(slot, dict) and slot.get("name") == name and slot.get("link") is not None:
                return self.resolve_input(scope.parent, scope.instance, i, visited)
        if name in scope.promoted:
            return ("value", scope.promoted[name])
        return None

    def resolve_output(
        self, scope: _Scope, node: Mapping[str, Any], slot: int, want: Any, visited: set[str]
    ) -> Any:
        key = f"{scope.exec_id(node['id'])}[O]{slot}"
        if key in visited:
            self.problems.append(f"node {scope.exec_id(node['id'])} ({_title(node)}): its links form a cycle")
            return None
        visited.add(key)
        kind, mode = str(node.get("type")), node.get("mode", 0)
        if mode == MUTED:
            return None
        if mode == BYPASSED:
            index = self._bypass_slot(node, slot, want)
            return None if index < 0 else self.resolve_input(scope, node, index, visited)
        if kind in self.subgraphs:
            return self._from_subgraph_output(scope, node, slot, want, visited)
        if kind == "Reroute":
            return self.resolve_input(scope, node, 0, visited)
        if kind == "PrimitiveNode":
            values = node.get("widgets_values") or [None]
            return ("value", values[0])
        if kind in VIRTUAL_NODES:
            return None
        return ("link", scope.exec_id(node["id"]), slot)

    def _bypass_slot(self, node: Mapping[str, Any], slot: int, want: Any) -> int:
        inputs = [i for i in node.get("inputs") or [] if isinstance(i, dict)]
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type", "*") if slot < len(outputs) and isinstance(outputs[slot], dict) else "*"
        if str(want) in ("*", ""):
            return slot if len(inputs) > slot else (0 if inputs else -1)
        if slot < len(inputs) and _compatible(inputs[slot].get("type"), out_type) and _compatible(
            inputs[slot].get("type"), want
        ):
            return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == want:
                return i
        for i, inp in enumerate(inputs):
            if _compatible(inp.get("type"), out_type) and _compatible(inp.get("type"), want):
                return i
        return -1

    def _from_subgraph_output(
        self, scope: _Scope, instance: Mapping[str, Any], slot: int, want: Any, visited: set[str]
    ) -> Any:
        child = self.child_scope(scope, dict(instance))
        assert child.definition is not None
        outputs = child.definition.get("outputs") or []
        link_ids = outputs[slot].get("linkIds") or [] if slot < len(outputs) else []
        link = child.links.get(int(link_ids[0])) if link_ids else None
        if link is None:
            return None
        if link.origin_id == SUBGRAPH_INPUT:  # an input wired straight to an output
            return self._from_subgraph_input(child, link.origin_slot, visited)
        inner = child.nodes.get(link.origin_id)
        return None if inner is None else self.resolve_output(child, inner, link.origin_slot, want, visited)

    # --- nodes --------------------------------------------------------------------------------------------

    def walk(self, scope: _Scope, out: dict[str, Any]) -> None:
        for node in scope.nodes.values():
            kind, mode = str(node.get("type")), node.get("mode", 0)
            if kind in VIRTUAL_NODES or mode in (MUTED, BYPASSED):
                continue
            if kind in self.subgraphs:
                self.walk(self.child_scope(scope, node), out)
                continue
            if kind.startswith(("workflow>", "workflow/")):
                self.problems.append(
                    f"node {scope.exec_id(node['id'])} ({_title(node)}): legacy group nodes cannot be converted; "
                    "convert the group to a subgraph in ComfyUI"
                )
                continue
            converted = self.convert_node(scope, node)
            if converted is not None:
                out[scope.exec_id(node["id"])] = converted

    def _missing_type(self, scope: _Scope, node: Mapping[str, Any]) -> str:
        props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
        pack, version = props.get("cnr_id"), props.get("ver")
        where = f"node {scope.exec_id(node['id'])} ({_title(node)})"
        if pack == "comfy-core":
            newer = f" (it is a core node of ComfyUI {version})" if version else " (it is a core node)"
            return f"{where}: node type {node.get('type')} is not on {self.server}{newer}: update ComfyUI"
        hint = f"install the custom node pack {pack!r}" if pack else "install the custom node pack that provides it"
        return f"{where}: node type {node.get('type')} is not on {self.server}: {hint}"

    def convert_node(self, scope: _Scope, node: Mapping[str, Any]) -> dict[str, Any] | None:
        kind = str(node.get("type"))
        spec = self.object_info.get(kind)
        if not isinstance(spec, dict):
            self.problems.append(self._missing_type(scope, node))
            return None
        slots = [s for s in node.get("inputs") or [] if isinstance(s, dict)]
        slot_index = {str(s.get("name")): i for i, s in enumerate(slots)}
        widgets = node.get("widgets_values")
        queue = list(widgets) if isinstance(widgets, list) else []
        inputs: dict[str, Any] = {}
        declared: set[str] = set()
        for name, kind_, opts, _required in input_specs(spec):
            declared.add(name)
            if is_widget(kind_, opts):
                if isinstance(widgets, dict):
                    if name in widgets:
                        inputs[name] = widgets[name]
                elif queue:
                    inputs[name] = queue.pop(0)
                    if (
                        kind_ == "INT"
                        and queue
                        and (opts.get("control_after_generate") or name in ("seed", "noise_seed"))
                        and queue[0] in CONTROL_VALUES
                    ):
                        queue.pop(0)
                    if opts.get("image_upload") and queue and queue[0] == "image":
                        queue.pop(0)
            if name in slot_index:
                self._set_from_slot(scope, node, slot_index[name], name, inputs)
        for name, i in slot_index.items():  # dynamic inputs the schema does not list (e.g. "values.a")
            if name not in declared:
                self._set_from_slot(scope, node, i, name, inputs)
        return {"class_type": kind, "inputs": inputs, "_meta": {"title": _title(node)}}

    def _set_from_slot(
        self, scope: _Scope, node: Mapping[str, Any], index: int, name: str, inputs: dict[str, Any]
    ) -> None:
        resolved = self.resolve_input(scope, node, index, set())
        if resolved is None:  # unconnected, or led to something muted: a widget keeps its own value
            return
        inputs[name] = list(resolved[1:]) if resolved[0] == "link" else resolved[1]


def convert(wf: Mapping[str, Any], object_info: Mapping[str, Any], *, server: str = "this ComfyUI") -> dict[str, Any]:
    """The API-format graph of a UI export (see the module docstring); WorkflowInvalid lists what cannot be
    converted, each problem naming the node (its flattened id and title) and the reason."""
    conv = _Converter(wf, object_info, server)
    out: dict[str, Any] = {}
    conv.walk(conv.root, out)
    for node in out.values():  # inputs that lead to nodes not in the result (muted, unknown) are dropped
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in out:
                del node["inputs"][name]
    if conv.problems:
        unique = list(dict.fromkeys(conv.problems))
        raise WorkflowInvalid(
            "cannot convert this UI-format workflow: " + "; ".join(unique) + f". Or {API_FORMAT_ADVICE}",
            details={"problems": unique},
        )
    if not out:
        raise WorkflowInvalid(f"this UI-format workflow has no node that runs (all muted?). {API_FORMAT_ADVICE}")
    return out
