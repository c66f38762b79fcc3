"""A real headless Chromium (Debian's `chromium`) loading pages from a loopback server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--window-size=1280,2000"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is missing: apt-get install -y chromium")
    return found


def screenshot(url: str, path: Path, profile: Path) -> str:
    """Load `url` in a fresh headless Chromium, write a screenshot, return Chromium's stderr."""
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def assert_readable_png(path: Path) -> None:
    from PIL import Image

    assert path.exists() and path.stat().st_size > 20_000, path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1280, 2000)
        rgb = image.convert("RGB")
        assert all(low != high for low, high in rgb.getextrema()), "screenshot is a single colour"
        assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 50, "screenshot has almost no content"


def console_errors(chromium_log: str) -> list[str]:
    """Lines of Chromium's stderr that report a console message or an uncaught script error."""
    return [line for line in chromium_log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
