"""The name a Wan2GP output is stored under (worker_wgp.engine.output_name): Wan2GP's own names carry the prompt
(seen on the real Wan2GP, issue 23); the stored name keeps its time and seed, and never repeats within a task."""

from __future__ import annotations

import pytest

from worker_wgp.engine import output_name


@pytest.mark.parametrize(
    ("wan2gp_name", "stored"),
    [
        ("2026-12-07-13h03m22s_seed1_a red fox runs through the snow.mp4", "2026-12-07-13h03m22s_seed1.mp4"),
        ("2026-12-07-13h03m22s_seed42_ein Fuchs läuft\tdurch 'den' Schnee.mp4", "2026-12-07-13h03m22s_seed42.mp4"),
        ("2026-12-07-13h03m22s_seed3_.png", "2026-12-07-13h03m22s_seed3.png"),
        ("2026-12-07-13h03m22s_seed3.mp4", "2026-12-07-13h03m22s_seed3.mp4"),
        ("my clip (final).mp4", "my_clip_final_.mp4"),  # an output_filename template's name: made safe
        ("..", "output"),
    ],
)
def test_stored_name(wan2gp_name: str, stored: str) -> None:
    assert output_name(wan2gp_name) == stored


def test_a_name_already_taken_in_the_task_gets_a_number() -> None:
    taken = {"2026-12-07-13h03m22s_seed1.mp4", "2026-12-07-13h03m22s_seed1_2.mp4"}
    assert output_name("2026-12-07-13h03m22s_seed1_a fox.mp4", taken) == "2026-12-07-13h03m22s_seed1_3.mp4"
    assert output_name("clip", {"clip"}) == "clip_2"
