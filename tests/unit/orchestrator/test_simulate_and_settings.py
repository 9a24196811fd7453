"""The simulator runs the policy end to end; traces round-trip through CSV; settings name bad variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_worker.errors import ConfigError
from gpu_orchestrator import simulate, traces
from gpu_orchestrator.policy import PolicyParams
from gpu_orchestrator.settings import load_orchestrator_settings


def test_simulation_completes_every_task_and_accounts_gpu_time():
    trace = traces.bursty(hours=2, seed=5)
    ours, base = simulate.compare(trace, PolicyParams(), simulate.SimConfig(seed=5, stuck_spawn_p=0.2))
    for r in (ours, base):
        assert r.completed == r.submitted == len(trace)
        busy_hours = sum(t.duration_s for t in trace) / 3600
        assert r.gpu_hours > busy_hours  # pods cost at least the work they did, plus spawn and idle time
        assert 0 <= r.wait_p50_s <= r.wait_p95_s <= r.wait_max_s
        assert max(n for _, _, n, _ in r.timeline) <= 10
    assert min(n for _, _, n, _ in base.timeline[4:]) >= 2  # the baseline keeps two pods
    assert ours.timeline[-1][2] == 0  # ours releases everything once the work is done


def test_trace_csv_round_trip_and_bad_csv(tmp_path: Path):
    trace = traces.diurnal(hours=3, seed=1)
    traces.write_csv(trace, tmp_path / "t.csv")
    back = traces.read_csv(tmp_path / "t.csv")
    assert len(back) == len(trace) and abs(back[-1].arrival_s - trace[-1].arrival_s) < 0.01
    (tmp_path / "bad.csv").write_text("arrival,task_type\n1,comfy\n")
    with pytest.raises(ConfigError, match="duration_s"):
        traces.read_csv(tmp_path / "bad.csv")


def test_cli_writes_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("matplotlib")
    assert simulate.main(["--trace", "steady", "--hours", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "steady_1h.png").stat().st_size > 10_000
    assert '"gpu_hours_saving"' in capsys.readouterr().out


def test_settings_errors_name_the_variable():
    s = load_orchestrator_settings({"MAX_WORKERS": "4", "RUNPOD_GPU_TYPES": "A, B", "POD_ENV_COMFY_URL": "x"})
    assert s.max_workers == 4 and s.gpu_types == ("A", "B") and s.pod_env == {"COMFY_URL": "x"}
    with pytest.raises(ConfigError, match="MAX_HOURLY_SPEND"):
        load_orchestrator_settings({"MAX_HOURLY_SPEND": "lots"})
    with pytest.raises(ConfigError, match="MIN_WORKERS"):
        load_orchestrator_settings({"MIN_WORKERS": "5", "MAX_WORKERS": "2"})
    with pytest.raises(ConfigError, match="RUNPOD_CLOUD_TYPE"):
        load_orchestrator_settings({"RUNPOD_CLOUD_TYPE": "cheap"})
    with pytest.raises(ConfigError, match="RUNPOD_API_KEY"):
        load_orchestrator_settings({}).check_provider()
