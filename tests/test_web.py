"""The live web view in a real browser, and the annotated video: `run` on a file with --http, --keep-running and
--save-annotated; headless Chromium screenshots the page; the camera's tile must show the decoded frame with the
detector's boxes drawn in their label colours."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import av
import httpx
import numpy as np
from PIL import Image

from engines.models import SYNTH_LABELS
from pipeline.monitor.annotate import label_colour, line_width
from tests.browser import CHROMIUM_MISSING, find_chromium, screenshot
from tests.conftest import ROOT
from tests.system_deps import needs_system

pytestmark = needs_system(find_chromium() is not None, CHROMIUM_MISSING)

FRAMES, WIDTH, HEIGHT = 30, 320, 240  # small enough to show at natural size in a tile (min 360 px wide)


class StderrLines:
    """Collects a child's stderr lines in a thread, so its pipe never fills up."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in stderr after {timeout} s:\n{''.join(self.lines)}")

    @property
    def text(self) -> str:
        self._thread.join(10)
        return "".join(self.lines)


def locate(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, int, float]:
    """Where `needle` appears in `haystack`: (y, x, mean absolute difference per channel value there).

    Coarse search on 8x-reduced images, then every offset within 8 px of the best coarse match."""
    def reduce(img: np.ndarray, k: int) -> np.ndarray:
        h, w = img.shape[0] // k * k, img.shape[1] // k * k
        return img[:h, :w].astype(np.float32).reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))

    k = 8
    hs, nd = reduce(haystack, k), reduce(needle, k)
    best = (np.inf, 0, 0)
    for y in range(hs.shape[0] - nd.shape[0] + 1):
        # [rows, x, channel, cols] -> [x, rows, cols, channel]: every horizontal offset at once
        windows = np.lib.stride_tricks.sliding_window_view(hs[y:y + nd.shape[0]], nd.shape[1], axis=1)
        diffs = np.abs(windows.transpose(1, 0, 3, 2) - nd[None]).mean(axis=(1, 2, 3))
        x = int(diffs.argmin())
        if diffs[x] < best[0]:
            best = (float(diffs[x]), y, x)
    _, cy, cx = best
    h, w = needle.shape[:2]
    fine = (np.inf, 0, 0)
    ref = needle.astype(np.float32)
    for y in range(max(0, cy * k - k), min(haystack.shape[0] - h, cy * k + k) + 1):
        for x in range(max(0, cx * k - k), min(haystack.shape[1] - w, cx * k + k) + 1):
            d = float(np.abs(haystack[y:y + h, x:x + w].astype(np.float32) - ref).mean())
            if d < fine[0]:
                fine = (d, y, x)
    return fine[1], fine[2], fine[0]


def edge_pixels(region: np.ndarray, box: list[float], width: int) -> np.ndarray:
    """The pixels of a box's drawn outline (PIL draws `width` px inside the box), as an [N, 3] array."""
    h, w = region.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w - 1, x2), min(h - 1, y2)
    parts = [region[y1:y1 + width, x1:x2 + 1], region[y2 - width + 1:y2 + 1, x1:x2 + 1],
             region[y1:y2 + 1, x1:x1 + width], region[y1:y2 + 1, x2 - width + 1:x2 + 1]]
    return np.concatenate([p.reshape(-1, 3) for p in parts])


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 80) -> np.ndarray:
    return (np.abs(pixels.astype(np.int16) - np.array(colour, np.int16)).max(axis=-1) <= tolerance)


def test_live_page_shows_annotated_frame_and_annotated_video_is_complete(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, prefix: str
) -> None:
    video = make_video(FRAMES, seed=72, width=WIDTH, height=HEIGHT)
    token = "web-view-test-token"
    out_dir = tmp_path / "annotated"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_pipeline.py"), "run", "--source", f"clip={video}", "--http", "127.0.0.1:0",
         "--keep-running", "--save-annotated", str(out_dir), "--redis-url", redis_url, "--prefix", prefix],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "RPN_API_TOKEN": token},
    )
    stderr = StderrLines(proc)
    try:
        line = stderr.wait_for("HTTP API on http://127.0.0.1:", 120)
        base = line.split("HTTP API on ", 1)[1].split()[0]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            done = {"processed": FRAMES, "state": "finished"}
            deadline = time.monotonic() + 60
            while not done.items() <= http.get("/api/cameras/clip").json().items():
                assert time.monotonic() < deadline, "the file was not processed in time"
                time.sleep(0.1)
            last = http.get("/api/cameras/clip").json()["last_frame"]
            assert last["index"] == FRAMES - 1 and last["objects"], last
            jpeg = http.get("/api/cameras/clip/frame.jpg")
            assert jpeg.headers["x-frame-index"] == str(FRAMES - 1)  # the page shows this very frame
            expected = np.asarray(Image.open(BytesIO(jpeg.content)).convert("RGB"))
            assert expected.shape == (HEIGHT, WIDTH, 3)

            # The token travels in the URL fragment, which the browser never sends to the server.
            shot_path = screenshot(f"{base}/#token={token}", tmp_path / "page.png")
        shot = np.asarray(Image.open(shot_path).convert("RGB"))
        y, x, diff = locate(shot, expected)
        tile = shot[y:y + HEIGHT, x:x + WIDTH]
        page_bg = shot[-5:, -5:].reshape(-1, 3).mean(axis=0)  # bottom-right corner: plain page background
        with av.open(str(video)) as source:  # the same frame as decoded, without annotations: the control
            raw = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)][FRAMES - 1]
        width = line_width(WIDTH, HEIGHT)
        fractions, raw_fractions = [], []
        for obj in last["objects"]:
            colour = label_colour(SYNTH_LABELS.index(obj["label"]))
            fractions.append(float(near(edge_pixels(tile, obj["box"], width), colour).mean()))
            raw_fractions.append(float(near(edge_pixels(raw, obj["box"], width), colour).mean()))
        palette_px = int(sum(near(tile, label_colour(i), 40).sum() for i in range(1, len(SYNTH_LABELS))))
        print(f"tile at ({x},{y}): mean abs diff to the API's JPEG {diff:.2f}, pixel std {tile.std():.1f}, "
              f"page background {page_bg.round(1).tolist()}, {len(fractions)} boxes with "
              f"{[round(f, 2) for f in fractions]} of their outline in the label colour (in the raw frame: "
              f"{[round(f, 2) for f in raw_fractions]}), {palette_px} pixels within 40 of a box colour")
        assert diff < 6, f"the page does not show the camera's annotated frame (mean abs diff {diff:.1f})"
        assert tile.std() > 20, "the tile is (nearly) uniform: no decoded frame"
        assert np.abs(tile.reshape(-1, 3).mean(axis=0) - page_bg).max() > 10, "the tile looks like the background"
        assert min(fractions) > 0.6, f"box outlines not drawn in their label colours: {fractions}"
        assert max(raw_fractions) < 0.2, f"the raw frame has box colours there already: {raw_fractions}"
        assert palette_px > 200

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = stderr.text
    assert proc.returncode == 0, err
    assert token not in out and token not in err
    assert "bearer token required" in err

    path = out_dir / "clip.mp4"
    assert f"Annotated video of clip: {path} ({FRAMES} frames)" in out
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (WIDTH, HEIGHT)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == FRAMES
    # Its last frame is the same annotated picture the page showed (both lossy: compare loosely).
    assert np.abs(frames[-1].astype(np.float32) - expected).mean() < 6
