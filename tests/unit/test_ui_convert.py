"""UI → API conversion of what current ComfyUI frontends export: subgraphs (with promoted widgets, nested),
primitive and reroute nodes, muted and bypassed nodes, and node types the server lacks."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_worker.engine import problems, ui_to_api
from comfy_worker.errors import WorkflowInvalid
from tests.wan_cases import object_info_0364


def node(nid: int, kind: str, inputs: list[dict[str, Any]] | None = None, widgets: Any = None, **kw: Any) -> dict:
    return {"id": nid, "type": kind, "mode": 0, "inputs": inputs or [], "widgets_values": widgets or [], **kw}


def slot(name: str, link: int | None, kind: str = "*", widget: bool = False) -> dict[str, Any]:
    return {"name": name, "type": kind, "link": link, **({"widget": {"name": name}} if widget else {})}


def subgraph_export(instance_mode: int = 0, widgets: Any = None) -> dict[str, Any]:
    """LoadImage → [subgraph: ImageInvert → ImageBlur(radius from a promoted widget)] → SaveImage."""
    inner = {
        "id": "sg-blur",
        "name": "Invert and blur",
        "inputs": [
            {"name": "image", "type": "IMAGE", "linkIds": [100]},
            {"name": "blur_radius", "type": "INT", "linkIds": [101]},
        ],
        "outputs": [{"name": "IMAGE", "type": "IMAGE", "linkIds": [102]}],
        "nodes": [
            node(50, "ImageInvert", [slot("image", 100, "IMAGE")]),
            node(51, "ImageBlur", [slot("image", 103, "IMAGE"), slot("blur_radius", 101, "INT", True)], [9, 1.5]),
        ],
        "links": [
            {"id": 100, "origin_id": -10, "origin_slot": 0, "target_id": 50, "target_slot": 0, "type": "IMAGE"},
            {"id": 101, "origin_id": -10, "origin_slot": 1, "target_id": 51, "target_slot": 1, "type": "INT"},
            {"id": 103, "origin_id": 50, "origin_slot": 0, "target_id": 51, "target_slot": 0, "type": "IMAGE"},
            {"id": 102, "origin_id": 51, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
        ],
    }
    instance = node(
        2,
        "sg-blur",
        [slot("image", 10, "IMAGE"), slot("blur_radius", None, "INT", True)],
        [3] if widgets is None else widgets,
        outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [11]}],
        mode=instance_mode,
    )
    return {
        "nodes": [
            node(1, "LoadImage", widgets=["in.png", "image"], outputs=[{"type": "IMAGE", "links": [10]}]),
            instance,
            node(3, "SaveImage", [slot("images", 11, "IMAGE")], ["out"]),
        ],
        "links": [[10, 1, 0, 2, 0, "IMAGE"], [11, 2, 0, 3, 0, "IMAGE"]],
        "definitions": {"subgraphs": [inner]},
    }


def test_subgraph_flattened_with_promoted_widget_value() -> None:
    api = ui_to_api(subgraph_export(), object_info_0364())
    assert set(api) == {"1", "2:50", "2:51", "3"}
    assert api["2:50"]["inputs"] == {"image": ["1", 0]}
    assert api["2:51"]["inputs"] == {"image": ["2:50", 0], "blur_radius": 3, "sigma": 1.5}
    assert api["3"]["inputs"] == {"images": ["2:51", 0], "filename_prefix": "out"}
    assert problems(api, object_info_0364()) == []


def test_subgraph_without_promoted_values_keeps_the_inner_widget() -> None:
    api = ui_to_api(subgraph_export(widgets=[]), object_info_0364())
    assert api["2:51"]["inputs"]["blur_radius"] == 9


def test_bypassed_subgraph_passes_its_input_through() -> None:
    api = ui_to_api(subgraph_export(instance_mode=4), object_info_0364())
    assert set(api) == {"1", "3"} and api["3"]["inputs"]["images"] == ["1", 0]


def test_muted_subgraph_drops_its_nodes_and_the_inputs_they_fed() -> None:
    api = ui_to_api(subgraph_export(instance_mode=2), object_info_0364())
    assert set(api) == {"1", "3"} and "images" not in api["3"]["inputs"]


def test_nested_subgraph_ids_and_links() -> None:
    wf = subgraph_export()
    outer = {
        "id": "sg-outer",
        "name": "Outer",
        "inputs": [{"name": "image", "type": "IMAGE", "linkIds": [200]}],
        "outputs": [{"name": "IMAGE", "type": "IMAGE", "linkIds": [201]}],
        "nodes": [
            node(7, "sg-blur", [slot("image", 200, "IMAGE")], [5], outputs=[{"type": "IMAGE", "links": [201]}])
        ],
        "links": [
            {"id": 200, "origin_id": -10, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "IMAGE"},
            {"id": 201, "origin_id": 7, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
        ],
    }
    wf["definitions"]["subgraphs"].append(outer)
    wf["nodes"][1]["type"] = "sg-outer"
    wf["nodes"][1]["inputs"] = [slot("image", 10, "IMAGE")]
    api = ui_to_api(wf, object_info_0364())
    assert set(api) == {"1", "2:7:50", "2:7:51", "3"}
    assert api["2:7:50"]["inputs"] == {"image": ["1", 0]}
    assert api["2:7:51"]["inputs"]["blur_radius"] == 5
    assert api["3"]["inputs"]["images"] == ["2:7:51", 0]


def test_primitive_reroute_muted_and_bypassed_nodes() -> None:
    wf = {
        "nodes": [
            node(1, "EmptyImage", widgets=[64, 64, 1, 0]),
            node(2, "PrimitiveNode", widgets=[7, "fixed"]),
            node(3, "Reroute", [slot("", 20)]),
            node(4, "ImageBlur", [slot("image", 21, "IMAGE"), slot("blur_radius", 22, "INT", True)], [1, 1.0]),
            # bypassed: its IMAGE output is fed by its IMAGE input, which is its second slot (after a MASK)
            node(5, "JoinImageWithAlpha", [slot("alpha", None, "MASK"), slot("image", 23, "IMAGE")], mode=4,
                 outputs=[{"type": "IMAGE", "links": [24]}]),
            node(6, "SaveImage", [slot("images", 24, "IMAGE")], ["kept"]),
            node(7, "PreviewImage", [slot("images", 25, "IMAGE")], mode=2),
            node(8, "ImageInvert", [slot("image", 26, "IMAGE")]),
            node(9, "MarkdownNote", widgets=["# notes are dropped"]),
        ],
        "links": [
            [20, 1, 0, 3, 0, "IMAGE"], [21, 3, 0, 4, 0, "IMAGE"], [22, 2, 0, 4, 1, "INT"],
            [23, 4, 0, 5, 1, "IMAGE"], [24, 5, 0, 6, 0, "IMAGE"], [25, 4, 0, 7, 0, "IMAGE"],
            [26, 7, 0, 8, 0, "IMAGE"],
        ],
    }  # fmt: skip
    api = ui_to_api(wf, object_info_0364())
    assert set(api) == {"1", "4", "6", "8"}
    assert api["4"]["inputs"] == {"image": ["1", 0], "blur_radius": 7, "sigma": 1.0}
    assert api["6"]["inputs"]["images"] == ["4", 0]  # straight through the bypassed node
    assert api["8"]["inputs"] == {}  # its source was muted


def test_missing_node_types_are_named_with_the_reason() -> None:
    wf = {
        "nodes": [
            node(1, "ComfyMathExpression", properties={"cnr_id": "comfy-core", "ver": "0.19.1"}, title="Frames"),
            node(2, "VHS_VideoCombine", properties={"cnr_id": "comfyui-videohelpersuite"}),
            node(3, "SomethingElse"),
            node(4, "workflow>My group"),
        ],
        "links": [],
    }
    with pytest.raises(WorkflowInvalid) as exc:
        ui_to_api(wf, object_info_0364(), server="ComfyUI 0.3.64")
    assert exc.value.details["problems"] == [
        "node 1 (Frames): node type ComfyMathExpression is not on ComfyUI 0.3.64 (it is a core node of ComfyUI "
        "0.19.1): update ComfyUI",
        "node 2 (VHS_VideoCombine): node type VHS_VideoCombine is not on ComfyUI 0.3.64: install the custom node "
        "pack 'comfyui-videohelpersuite'",
        "node 3 (SomethingElse): node type SomethingElse is not on ComfyUI 0.3.64: install the custom node pack "
        "that provides it",
        "node 4 (workflow>My group): legacy group nodes cannot be converted; convert the group to a subgraph in "
        "ComfyUI",
    ]


def test_damaged_export_names_the_node() -> None:
    wf = {"nodes": [node(1, "SaveImage", [slot("images", 99, "IMAGE")], ["x"])], "links": []}
    with pytest.raises(WorkflowInvalid, match=r"node 1 \(SaveImage\): input 'images' uses link 99, which the export"):
        ui_to_api(wf, object_info_0364())


def test_all_muted_is_an_error() -> None:
    wf = {"nodes": [node(1, "EmptyImage", widgets=[1, 1, 1, 0], mode=2)], "links": []}
    with pytest.raises(WorkflowInvalid, match="no node that runs"):
        ui_to_api(wf, object_info_0364())
