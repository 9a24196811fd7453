"""Helpers for comparing our Wan 2.2 graphs with ComfyUI's official templates (PyPI comfyui-workflow-templates-json).

The current i2v / t2v templates use two core nodes newer than ComfyUI 0.3.64 (``ComfySwitchNode``, 0.13+, and
``ComfyMathExpression``, 0.18+) to switch between the normal and the 4-step-LoRA settings and to compute the
frame count. To compare like with like, :data:`NEWER_NODES` describes them (from the templates' own slots) so
the converter can flatten those templates, and :func:`fold_constants` then evaluates what they compute from
constants, as the server would: primitives become values, a switch with a constant condition becomes the branch it
picks, a math expression over constants becomes its result, and nodes no output needs are dropped.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections import Counter
from importlib import resources
from typing import Any

NEWER_NODES: dict[str, Any] = {
    "ComfySwitchNode": {
        "input": {"required": {"switch": ["BOOLEAN", {}], "on_false": ["*", {}], "on_true": ["*", {}]}},
        "input_order": {"required": ["switch", "on_false", "on_true"]},
        "output": ["*"],
    },
    "ComfyMathExpression": {
        "input": {"required": {"expression": ["STRING", {}]}},
        "output": ["FLOAT", "INT", "BOOLEAN"],
    },
}
PRIMITIVES = ("PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString", "PrimitiveStringMultiline")
OUTPUT_NODES = ("SaveVideo", "SaveImage", "SaveLatent", "PreviewImage")


def template(name: str) -> dict[str, Any]:
    root = resources.files("comfyui_workflow_templates_json") / "templates"
    return json.loads((root / f"{name}.json").read_text(encoding="utf-8"))


def is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}  # fmt: skip
_FUNCS = {"floor": math.floor, "ceil": math.ceil, "round": round, "min": min, "max": max, "abs": abs}


def evaluate(expression: str, names: dict[str, Any]) -> Any:
    """Arithmetic with a, b, c and floor/ceil/round/min/max/abs (what the templates' expressions use)."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError(f"unsupported expression: {expression}")

    return ev(ast.parse(expression.replace("floor (", "floor("), mode="eval"))


def fold_constants(graph: dict[str, Any]) -> dict[str, Any]:
    g = json.loads(json.dumps(graph))
    while True:
        values: dict[tuple[str, int], Any] = {}
        for nid, node in g.items():
            inputs = node["inputs"]
            if node["class_type"] in PRIMITIVES and not is_link(inputs.get("value")):
                values[(nid, 0)] = inputs["value"]
            elif node["class_type"] == "ComfyMathExpression" and not any(is_link(v) for v in inputs.values()):
                result = evaluate(inputs["expression"], {k.split(".", 1)[1]: v for k, v in inputs.items() if "." in k})
                values.update({(nid, 0): float(result), (nid, 1): int(result), (nid, 2): bool(result)})
        changed = False
        for node in g.values():
            for name, v in list(node["inputs"].items()):
                if is_link(v) and (v[0], v[1]) in values:
                    node["inputs"][name] = values[(v[0], v[1])]
                    changed = True
                elif is_link(v) and g[v[0]]["class_type"] == "ComfySwitchNode":
                    switch = g[v[0]]["inputs"]
                    if not is_link(switch.get("switch")):
                        node["inputs"][name] = switch["on_true" if switch["switch"] else "on_false"]
                        changed = True
        if not changed:
            break
    needed: set[str] = set()
    todo = [nid for nid, n in g.items() if n["class_type"] in OUTPUT_NODES]
    while todo:
        nid = todo.pop()
        if nid not in needed:
            needed.add(nid)
            todo += [v[0] for v in g[nid]["inputs"].values() if is_link(v)]
    return {nid: n for nid, n in g.items() if nid in needed}


def _value(v: Any) -> Any:
    """Numbers compare by value (5 == 5.0 == 5.000000000000001, as the UI's float widgets store them)."""
    return round(float(v), 6) if isinstance(v, int | float) and not isinstance(v, bool) else v


def signatures(graph: dict[str, Any]) -> Counter[str]:
    """One signature per node: its type, literal inputs and, recursively, what feeds each linked input. Equal
    multisets mean the same graph up to node ids and titles."""
    memo: dict[str, str] = {}

    def sig(nid: str) -> str:
        if nid not in memo:
            node = graph[nid]
            parts = []
            for name, v in sorted(node["inputs"].items()):
                parts.append(f"{name}<-{sig(v[0])}#{v[1]}" if is_link(v) else f"{name}={_value(v)!r}")
            memo[nid] = f"{node['class_type']}({', '.join(parts)})"
        return memo[nid]

    return Counter(sig(nid) for nid in graph)


def samplers(graph: dict[str, Any]) -> list[dict[str, Any]]:
    """The literal settings of every sampler, in a stable order."""
    found = [
        {k: _value(v) for k, v in n["inputs"].items() if not is_link(v)}
        for n in graph.values()
        if n["class_type"] in ("KSampler", "KSamplerAdvanced")
    ]
    return sorted(found, key=lambda s: json.dumps(s, sort_keys=True))


def edges(graph: dict[str, Any]) -> Counter[tuple[str, int, str, str]]:
    """Links as (source type, output slot, consumer type, input name)."""
    return Counter(
        (graph[v[0]]["class_type"], v[1], node["class_type"], name)
        for node in graph.values()
        for name, v in node["inputs"].items()
        if is_link(v)
    )
