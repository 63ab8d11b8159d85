"""The report in a real browser (issue 15.2): Debian's headless Chromium loads the page from a
file, runs its script, and its DOM carries the figures; its screenshot is a picture, not blank.

Chromium is installed by `make install` (and in CI by .ci/run). Without it the test skips,
unless MCSYNC_REQUIRE_BROWSER is set (CI sets it), when it fails: CI must run it.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.ops.status import audience_status
from mcsync.store.database import Staging

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
BROWSER_TIMEOUT = 90


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("MCSYNC_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (make install installs it)")
        pytest.skip("chromium is not installed (make install installs it)")
    return CHROMIUM


def browse(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    done = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit truecolour PNG, decoded with zlib
    and the PNG filters (no image library is a dependency)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    size = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * size
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up = previous[i]
            corner = previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def test_the_report_renders_in_chromium(world: World, tmp_path: Path, chromium: str) -> None:
    for n in range(6):
        world.person(f"p{n}@example.org", mc="subscribed", civi="Added")
    world.person("new@example.org", mc="subscribed")
    for n in range(3):
        world.person(f"private{n}@example.org", civi="Added", do_not_email=True)
    world.person("alice@example.org", civi="Added", do_not_email=True)
    held = world.civi.add_contact("Held", "Back")
    world.civi.add_email(held, "held@example.org", on_hold=1)
    world.civi.set_group_status(held, world.group_id, "Added", when=world.ago(days=5))
    for _ in range(3):
        world.sync()
    page = tmp_path / "www" / "status.html"
    page.parent.mkdir()
    result = CliRunner().invoke(
        main, ["report", "--html", str(page), "--config", str(world.config_path)]
    )
    assert result.exit_code == 0, result.output
    staging = Staging(world.config.state_db, read_only=True)
    try:
        counts = audience_status(staging, world.config.audience[0])["counts"]
    finally:
        staging.close()

    # The DOM after the page's script ran, filtered by the address (#q=alice).
    dom = browse(chromium, tmp_path, "--dump-dom", page.as_uri() + "#q=" + quote("alice")).stdout
    figures = dict(re.findall(r'data-figure="(\w+)"><div class="value">([\d,]+)</div>', dom))
    assert figures["subscribed_at_mailchimp"] == str(counts["subscribed_at_mailchimp"]) == "7"
    assert figures["added_in_civicrm"] == str(counts["added_in_civicrm"])
    assert figures["cannot_subscribe"] == str(counts["cannot_subscribe"]) == "5"
    assert 'data-state="ok"' in dom and "In sync" in dom
    assert dom.count("<svg") == 2 and "Changes made by each run" in dom
    # The filter box ran: it holds the text, alice's row shows, the others are hidden.
    rows = re.findall(r"<tr data-filter=\"\"( hidden=\"\")?><td>([^<]+)</td>", dom)
    shown = [email for hidden, email in rows if not hidden]
    assert shown == ["alice@example.org"] and len(rows) == 5
    assert re.search(r'<div class="reason" data-reason="no_usable_email" hidden', dom)

    # A screenshot: a page with text and charts, not one colour.
    shot = tmp_path / "status.png"
    browse(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 1600)
    colours = {row[i : i + 3] for row in pixels[::4] for i in range(0, len(row), 12)}
    assert len(colours) > 50, f"{len(colours)} colours: a blank page?"
    background = max(colours, key=lambda c: sum(row.count(c) for row in pixels[::40]))
    busy_rows = sum(
        1
        for row in pixels[::8]
        if any(row[i : i + 3] != background for i in range(0, len(row), 12))
    )
    assert busy_rows > len(pixels[::8]) // 3, "most of the page is empty"
    if os.environ.get("MCSYNC_SCREENSHOT"):
        shutil.copy(shot, os.environ["MCSYNC_SCREENSHOT"])
