"""How ``/object_info`` describes a node's inputs, in both of its shapes (the older ``[["a", "b"], {...}]`` enum
form and the current ``["COMBO", {"options": [...]}]`` form, with ``input_order`` when present). Pure; shared by
the validator (:mod:`.workflow`) and the UI converter (:mod:`.ui_convert`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

API_FORMAT_ADVICE = (
    "export the workflow with 'Save (API Format)' in ComfyUI (enable Dev mode options in the settings "
    "on older versions) and submit that JSON"
)
PRIMITIVE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def input_specs(node_spec: Mapping[str, Any]) -> list[tuple[str, Any, dict[str, Any], bool]]:
    """(name, type, options, required) for every declared input, in the server's order."""
    inputs = node_spec.get("input") or {}
    order = node_spec.get("input_order") or {}
    out: list[tuple[str, Any, dict[str, Any], bool]] = []
    for section in ("required", "optional"):
        declared = inputs.get(section) or {}
        names = list(order.get(section) or declared.keys())
        names += [n for n in declared if n not in names]
        for name in names:
            if name not in declared:
                continue
            raw = declared[name]
            kind = raw[0] if isinstance(raw, list | tuple) and raw else raw
            opts = raw[1] if isinstance(raw, list | tuple) and len(raw) > 1 and isinstance(raw[1], dict) else {}
            out.append((name, kind, opts, section == "required"))
    return out


def enum_values(kind: Any, opts: Mapping[str, Any]) -> list[Any] | None:
    """The allowed values of an enum input, or None when the input is not an enum."""
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(opts.get("options") or [])
    return None


def is_widget(kind: Any, opts: Mapping[str, Any]) -> bool:
    """True for inputs the UI shows as a widget (their value sits in ``widgets_values``)."""
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in PRIMITIVE_TYPES
