"""The contact sheet of a real batch (eight runs rendered by the test ComfyUI), opened in headless Chromium from
file:// and over HTTP: thumbnails load, sorting and filtering change what is shown, a click plays the video,
and a sheet of a running batch reloads itself with sort and filters kept.

Set UPDATE_DOCS_SCREENSHOTS=1 to write docs/explore-contact-sheet.png from this run."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from comfy_worker.explore.batch import BatchResult
from comfy_worker.explore.sheet import make_sheet, read_state, write_sheet
from tests.browser import Chromium

pytestmark = pytest.mark.comfyui
REPO = Path(__file__).resolve().parents[3]
ORDER = "[...document.querySelectorAll('#grid .card')].map(c => Number(c.dataset.run))"


def runs_of(directory: Path) -> dict[int, dict]:
    return {int(k): v for k, v in read_state(directory)["runs"].items()}


async def thumbnails_loaded(b: Chromium) -> int:
    """How many thumbnails the page shows, once every one of them has loaded (decoded, non-zero size)."""
    await b.wait_for("[...document.querySelectorAll('img.thumb')].every(i => i.complete)")
    return await b.eval("[...document.querySelectorAll('img.thumb')].filter(i => i.naturalWidth > 0).length")


async def check_sheet(b: Chromium, url: str, directory: Path) -> None:
    runs = runs_of(directory)
    await b.goto(url)
    assert await thumbnails_loaded(b) == 8, b.console
    assert await b.eval("document.querySelectorAll('#grid .card').length") == 8
    assert await b.eval(ORDER) == list(range(8))

    # sort by denoise, then descending
    await b.eval("(() => { const s = document.getElementById('sort'); s.value = 'denoise';"
                 " s.dispatchEvent(new Event('change')); })()")
    by_denoise = sorted(runs, key=lambda i: runs[i]["values"]["denoise"])
    assert await b.eval(ORDER) == by_denoise
    await b.click("#sort-dir")
    assert await b.eval(ORDER) == by_denoise[::-1]

    # filter: a range on a number, then a value of a string parameter
    cut = sorted(r["values"]["denoise"] for r in runs.values())[4]
    await b.type_into("#filter-denoise-min", str(cut))
    expected = {i for i, r in runs.items() if r["values"]["denoise"] >= cut}
    await b.wait_for(f"document.querySelectorAll('#grid .card').length === {len(expected)}")
    assert set(await b.eval(ORDER)) == expected
    await b.click("input[data-filter='prefix'][data-value='explore/a']")
    expected_b = {i for i in expected if runs[i]["values"]["prefix"] == "explore/b"}
    await b.wait_for(f"document.querySelectorAll('#grid .card').length === {len(expected_b)}")
    assert set(await b.eval(ORDER)) == expected_b
    assert await b.eval("document.getElementById('shown').textContent") == f"showing {len(expected_b)} of 8"
    await b.click("#reset")
    await b.wait_for("document.querySelectorAll('#grid .card').length === 8")

    # a click opens the full video, which loads and plays
    first = by_denoise[-1]
    await b.click(f".card[data-run='{first}']")
    await b.wait_for("document.getElementById('viewer').classList.contains('open')")
    src = await b.eval("document.querySelector('#viewer video').getAttribute('src')")
    assert src == runs[first]["outputs"][0] and (directory / src).is_file()
    await b.wait_for("document.querySelector('#viewer video').readyState >= 2", timeout=20)
    assert await b.eval("document.querySelector('#viewer video').error") is None
    assert await b.eval("document.querySelector('#viewer video').videoWidth") == 64
    await b.wait_for("document.querySelector('#viewer video').currentTime > 0", timeout=20)
    await b.send("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape", windowsVirtualKeyCode=27)
    await b.wait_for("!document.getElementById('viewer').classList.contains('open')")


async def test_contact_sheet_from_file_url(local_batch: BatchResult, tmp_path: Path) -> None:
    directory = local_batch.directory
    sheet = await make_sheet(directory)
    text = sheet.read_text()
    assert "<script src" not in text and "<link" not in text and "http" not in text.split("<body>")[0]
    async with Chromium.launch(tmp_path / "chrome") as b:
        await check_sheet(b, sheet.as_uri(), directory)
        await b.goto(sheet.as_uri())
        await thumbnails_loaded(b)
        png = await b.screenshot()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        (REPO / "docs" / "explore-contact-sheet.png").write_bytes(png)


@pytest.fixture
async def served(local_batch: BatchResult) -> AsyncIterator[str]:
    """The batch directory over HTTP (a real aiohttp static server on 127.0.0.1)."""
    app = web.Application()
    app.router.add_static("/", local_batch.directory)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_contact_sheet_over_http_and_inline_thumbnails(local_batch: BatchResult, served: str,
                                                             tmp_path: Path) -> None:
    directory = local_batch.directory
    await make_sheet(directory)
    async with Chromium.launch(tmp_path / "chrome") as b:
        await check_sheet(b, f"{served}/contact_sheet.html", directory)
        # --inline: the HTML file alone (copied elsewhere) still shows every thumbnail
        await make_sheet(directory, inline=True)
        alone = tmp_path / "alone" / "sheet.html"
        alone.parent.mkdir()
        shutil.copy(directory / "contact_sheet.html", alone)
        await b.goto(alone.as_uri())
        assert await thumbnails_loaded(b) == 8
    await make_sheet(directory)


async def test_a_running_batch_sheet_reloads_itself_and_keeps_sort_and_filters(local_batch: BatchResult,
                                                                              tmp_path: Path) -> None:
    directory = tmp_path / "batch_copy"
    shutil.copytree(local_batch.directory, directory)
    state = read_state(directory)
    state["state"] = "running"
    for run_id in ("6", "7"):  # not rendered yet
        state["runs"][run_id].update(status="pending", outputs=[], thumbnail=None, seconds=None)
    sheet = write_sheet(directory, state=state, refresh_s=1)
    async with Chromium.launch(tmp_path / "chrome") as b:
        await b.goto(sheet.as_uri())
        assert await b.eval("document.getElementById('refresh-box').hidden") is False
        assert await thumbnails_loaded(b) == 6
        await b.eval("(() => { const s = document.getElementById('sort'); s.value = 'color';"
                     " s.dispatchEvent(new Event('change')); })()")
        await b.click("#sort-dir")
        await b.click("#refresh")
        order_before = await b.eval(ORDER)
        # the batch finishes runs 6 and 7 and rewrites the sheet; the page picks it up by itself
        state = json.loads((local_batch.directory / "progress.json").read_text())
        await b.eval("window.__marker = 1")
        write_sheet(directory, state=state, refresh_s=1)
        await b.wait_for("window.__marker === undefined && document.readyState === 'complete'", timeout=15)
        assert await thumbnails_loaded(b) == 8
        assert await b.eval("document.getElementById('sort').value") == "color"
        runs = runs_of(directory)
        colors = [runs[i]["values"]["color"] for i in await b.eval(ORDER)]
        assert colors == sorted(colors, reverse=True)
        assert len(order_before) == 8
        assert await b.eval("document.getElementById('state').textContent") == "finished"
