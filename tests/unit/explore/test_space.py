"""Sampling: every strategy's points respect each parameter's type and bounds; Sobol and LHS cover the cube more
evenly than random points; seeds multiply runs; every bad config is refused naming its key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy.stats import qmc

from comfy_worker.errors import BatchConfigInvalid
from comfy_worker.explore.batch_config import load_config, parse_config
from comfy_worker.explore.space import InputPath, Parameter, plan, unit_points
from tests.fixture_files import OBJECT_INFO_0364
from tests.integration.explore.workflows import tiny_video, write_batch

P = (InputPath("3", "x"),)
PARAMS = [
    Parameter("dn", "continuous", P, 0.2, 1.0),
    Parameter("snap", "continuous", (InputPath("3", "y"),), 1.0, 3.0, 0.5),
    Parameter("steps", "linear", (InputPath("3", "z"),), 4, 20, 4, integer=True),
    Parameter("sampler", "values", (InputPath("3", "s"),), values=("euler", "uni_pc", "dpmpp_2m")),
    Parameter("seed", "random_seed", (InputPath("3", "seed"),), integer=True),
]


@pytest.mark.parametrize("strategy", ["sobol", "lhs", "random", "linear", "grid"])
def test_every_strategy_respects_types_and_bounds(strategy: str) -> None:
    params = PARAMS[1:] if strategy == "grid" else PARAMS  # a grid needs discrete parameters
    p = plan(strategy, params, num_samples=16, seeds_per_sample=2, seed=3)
    assert p.runs, strategy
    for run in p.runs:
        v = run.values
        assert strategy == "grid" or (0.2 <= v["dn"] <= 1.0 and isinstance(v["dn"], float))
        assert v["snap"] in (1.0, 1.5, 2.0, 2.5, 3.0)
        assert v["steps"] in (4, 8, 12, 16, 20) and isinstance(v["steps"], int)
        assert v["sampler"] in ("euler", "uni_pc", "dpmpp_2m")
        assert isinstance(v["seed"], int) and 0 <= v["seed"] <= 2**32 - 1
    assert [r.run_id for r in p.runs] == list(range(len(p.runs)))
    # two seeds per point: runs come in pairs with the same point and different seeds
    for a, b in zip(p.runs[::2], p.runs[1::2], strict=True):
        assert a.sample_id == b.sample_id
        assert {k: v for k, v in a.values.items() if k != "seed"} == {k: v for k, v in b.values.items() if k != "seed"}
        assert a.values["seed"] != b.values["seed"]


def test_seeds_per_sample_multiplies_runs_and_the_plan_is_reproducible() -> None:
    one = plan("lhs", PARAMS, num_samples=10, seeds_per_sample=1, seed=1)
    three = plan("lhs", PARAMS, num_samples=10, seeds_per_sample=3, seed=1)
    assert len(one.runs) == 10 and len(three.runs) == 30
    again = plan("lhs", PARAMS, num_samples=10, seeds_per_sample=3, seed=1)
    assert [r.values for r in again.runs] == [r.values for r in three.runs]
    other = plan("lhs", PARAMS, num_samples=10, seeds_per_sample=3, seed=2)
    assert [r.values for r in other.runs] != [r.values for r in three.runs]


def test_grid_is_the_product_and_says_how_many_runs() -> None:
    p = plan("grid", [PARAMS[1], PARAMS[3]], num_samples=1)
    assert len(p.runs) == 5 * 3
    assert {(r.values["snap"], r.values["sampler"]) for r in p.runs} == {
        (s, m) for s in (1.0, 1.5, 2.0, 2.5, 3.0) for m in ("euler", "uni_pc", "dpmpp_2m")
    }
    assert any("= 15 points" in n for n in p.notes)


def test_linear_sweeps_from_every_minimum_to_every_maximum() -> None:
    p = plan("linear", PARAMS[:3], num_samples=5)
    assert [r.values["dn"] for r in p.runs] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert [r.values["steps"] for r in p.runs] == [4, 8, 12, 16, 20]


def test_sobol_rounds_up_to_a_power_of_two_and_says_so() -> None:
    p = plan("sobol", PARAMS, num_samples=24)
    assert len(p.runs) == 32
    assert any("rounded up to 32" in n for n in p.notes)
    assert len(plan("sobol", PARAMS, num_samples=16).runs) == 16


@pytest.mark.parametrize("strategy", ["sobol", "lhs"])
def test_sobol_and_lhs_have_lower_discrepancy_than_random(strategy: str) -> None:
    n, d = 64, 4
    ours = [qmc.discrepancy(unit_points(strategy, n, d, seed)[0]) for seed in range(10)]
    rand = [qmc.discrepancy(unit_points("random", n, d, seed)[0]) for seed in range(10)]
    assert np.mean(ours) < np.mean(rand)
    assert max(ours) < np.median(rand)


def test_values_are_uniform_over_discrete_choices() -> None:
    p = plan("lhs", [PARAMS[3]], num_samples=30, seed=4)
    counts = {v: sum(1 for r in p.runs if r.values["sampler"] == v) for v in ("euler", "uni_pc", "dpmpp_2m")}
    assert counts == {"euler": 10, "uni_pc": 10, "dpmpp_2m": 10}  # LHS: one point per stratum


def test_config_round_trip_and_run_values_land_in_the_workflow(tmp_path: Path) -> None:
    cfg = load_config(write_batch(tmp_path))
    p = cfg.plan()
    assert len(p.runs) == 4 and p.runs[0].name.startswith("0000_dn")
    wf = cfg.workflow_for(p.runs[1].values)
    assert wf["3"]["inputs"]["denoise"] == p.runs[1].values["denoise"]
    assert wf["2"]["inputs"]["color"] in (255, 65280, 16711680)
    assert wf["3"]["inputs"]["seed"] == p.runs[1].values["seed"]
    assert cfg.workflow["3"]["inputs"]["seed"] == 42, "the base workflow is not modified"
    assert cfg.key == load_config(write_batch(tmp_path)).key
    assert cfg.key != load_config(write_batch(tmp_path, seed=5)).key


def _err(tmp_path: Path, **overrides: Any) -> BatchConfigInvalid:
    with pytest.raises(BatchConfigInvalid) as info:
        load_config(write_batch(tmp_path, **overrides)).plan()
    return info.value


def _params(**changes: Any) -> dict[str, Any]:
    base = {
        "denoise": {"path": "nodes.3.inputs.denoise", "type": "continuous", "min": 0.2, "max": 1.0},
        "seed": {"path": "nodes.3.inputs.seed", "type": "random_seed"},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        ({"sampling_strategy": "halton"}, "sampling_strategy", "unknown strategy 'halton'"),
        ({"sampling_strategy": "sobel"}, "sampling_strategy", "did you mean 'sobol'"),
        ({"parameters": _params(denoise={"path": "nodes.3.inputs.denoise", "type": "gaussian", "min": 0, "max": 1})},
         "parameters.denoise.type", "unknown type 'gaussian'"),
        ({"parameters": _params(denoise={"path": "nodes.3.inputs.denoise", "type": "continuous", "min": 1,
                                         "max": 0.2})},
         "parameters.denoise.min", "min 1 is greater than max 0.2"),
        ({"parameters": _params(denoise={"path": "nodes.99.inputs.denoise", "type": "continuous", "min": 0, "max": 1})},
         "parameters.denoise.path", "names node 99, which is not in the workflow"),
        ({"parameters": _params(denoise={"path": "nodes.3.inputs.denoize", "type": "continuous", "min": 0, "max": 1})},
         "parameters.denoise.path", "has no input 'denoize' (did you mean 'denoise'?)"),
        ({"parameters": _params(denoise={"path": "nodes.3.inputs.latent", "type": "continuous", "min": 0, "max": 1})},
         "parameters.denoise.path", "is connected to node 1"),
        ({"parameters": _params(denoise={"path": "3.denoise", "type": "continuous", "min": 0, "max": 1})},
         "parameters.denoise.path", "is not a path like nodes.57.inputs.cfg"),
        ({"parameters": _params(denoise={"path": "nodes.3.inputs.denoise", "type": "linear", "min": 0, "max": 1})},
         "parameters.denoise.step", "needs a step"),
        ({"parameters": _params(denoise={"path": "nodes.3.inputs.denoise", "type": "values", "values": []})},
         "parameters.denoise.values", "non-empty list"),
        ({"parameters": _params(denoise={"path": "nodes.5.inputs.filename_prefix", "type": "continuous", "min": 0,
                                         "max": 1})},
         "parameters.denoise.type", "needs a numeric input"),
        ({"parameters": {}}, "parameters", "no parameters to vary"),
        ({"sampling_strategy": "grid", "parameters": _params(denoise={"path": "nodes.3.inputs.denoise",
                                                                      "type": "continuous", "min": 0, "max": 1})},
         "parameters.denoise", "give it a step"),
        ({"seeds_per_sample": 3, "parameters": {"denoise": _params()["denoise"]}}, "seeds_per_sample",
         "no parameter has type random_seed"),
        ({"num_samples": 0}, "num_samples", "must be >= 1"),
        ({"workflow_file": "missing.json"}, "workflow_file", "does not exist"),
        ({"sampling_stratgy": "lhs"}, "sampling_stratgy", "did you mean 'sampling_strategy'"),
        ({"output": {"run_name_pattern": "{cfg:.1f}"}}, "output.run_name_pattern", "{cfg} is not a parameter"),
        ({"output": {"run_name_pattern": "dn{denoise:.0f}"}}, "output.run_name_pattern", "include {run_id}"),
        ({"parameters": _params(dn2={"path": "nodes.3.inputs.denoise", "type": "values", "values": [1]})},
         "parameters.dn2.path", "is also set by parameter denoise"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, overrides: dict[str, Any], key: str, says: str) -> None:
    err = _err(tmp_path, **overrides)
    assert err.key == key, str(err)
    assert says in str(err)
    assert str(err).startswith(f"{key}: ")


def test_empty_grid_and_values_outside_the_servers_range_are_refused(tmp_path: Path) -> None:
    info = json.loads(OBJECT_INFO_0364.read_text())
    wf = {"1": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 6.0, "sampler_name": "euler",
                                                     "scheduler": "simple", "denoise": 1.0, "model": ["9", 0],
                                                     "positive": ["9", 0], "negative": ["9", 0],
                                                     "latent_image": ["9", 0]}}}
    out = {"run_name_pattern": "{run_id:04d}"}
    path = write_batch(tmp_path, workflow=wf, output=out, parameters={
        "cfg": {"path": "nodes.1.inputs.cfg", "type": "continuous", "min": 50, "max": 150}})
    with pytest.raises(BatchConfigInvalid) as err:
        load_config(path, object_info=info)
    assert err.value.key == "parameters.cfg" and "above the maximum 100" in str(err.value)
    path = write_batch(tmp_path, workflow=wf, output=out, parameters={
        "sampler": {"path": "nodes.1.inputs.sampler_name", "type": "values", "values": ["euler", "eulr"]}})
    with pytest.raises(BatchConfigInvalid) as err:
        load_config(path, object_info=info)
    assert err.value.key == "parameters.sampler" and "would send 'eulr'" in str(err.value)
    assert "euler" in str(err.value).split("eulr")[-1]  # the server's close matches follow
    raw = yaml.safe_load(write_batch(tmp_path, sampling_strategy="grid", output=out).read_text())
    raw["parameters"] = {"c": {"path": "nodes.2.inputs.color", "type": "linear", "min": 5, "max": 5.5, "step": 1}}
    cfg = parse_config(raw, tmp_path / "batch.yaml")
    assert len(cfg.plan().runs) == 1  # min == max with a step: one value, not an empty grid
    raw["parameters"]["c"].update(min=5, max=4)
    with pytest.raises(BatchConfigInvalid, match="min 5 is greater than max 4"):
        parse_config(raw, tmp_path / "batch.yaml")


def test_integer_inputs_stay_integers(tmp_path: Path) -> None:
    path = write_batch(tmp_path, output={"run_name_pattern": "{run_id:04d}"}, parameters={
        "frames": {"path": "nodes.3.inputs.frames", "type": "continuous", "min": 2, "max": 9}})
    cfg = load_config(path)
    values = [r.values["frames"] for r in cfg.plan().runs]
    assert all(isinstance(v, int) and 2 <= v <= 9 for v in values)
    assert tiny_video()["3"]["inputs"]["frames"] == 6
