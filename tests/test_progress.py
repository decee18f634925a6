"""Progress in a log: a line per finished input, and a line at least every few seconds of a long step."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from codeformer.jobs.loop import Batch, run_batch
from codeformer.progress import Progress


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "codeformer.progress"]


def test_a_log_gets_a_line_per_input_and_heartbeats_during_a_long_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="codeformer.progress"):
        with Progress(total=2, desc="restoring", unit="image", lines=True, heartbeat_s=0.2) as bar:
            bar.working_on("a.png")
            time.sleep(0.65)  # a long step: heartbeats while it runs
            bar.update(1, "a.png")
            bar.update(1, "b.png")
    lines = _lines(caplog)
    assert lines[-2:] == ["restoring 1/2: a.png", "restoring 2/2: b.png"]
    beats = lines[:-2]
    assert 2 <= len(beats) <= 4 and all(line.startswith("restoring 0/2: still working on a.png, ") for line in beats)


def test_frames_in_a_log_are_counted_every_few_seconds_not_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="codeformer.progress"):
        with Progress(total=100, desc="clip.mp4", unit="frame", lines=True, per_item=False, heartbeat_s=60) as bar:
            for _ in range(100):
                bar.update(1)
    assert _lines(caplog) == []  # quick frames: nothing until a step takes long


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog: pytest.LogCaptureFixture,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level(logging.INFO, logger="codeformer.progress"):
        with Progress(total=2, desc="restoring", unit="image", lines=False) as bar:
            bar.update(2, "b.png")
    assert _lines(caplog) == [] and "restoring" in capsys.readouterr().err


def test_every_batch_says_when_each_input_is_done(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inputs = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    batch = Batch(load=lambda path: path.name, process=lambda names: names, save=lambda path, result: None,
                  is_done=lambda path: path.name == "b.png")
    with caplog.at_level(logging.INFO, logger="codeformer.progress"):  # pytest's stderr is not a terminal
        run_batch(inputs, batch, desc="colorizing", unit="face")
    assert _lines(caplog) == ["colorizing 1/3: a.png", "colorizing 2/3: b.png (done before)", "colorizing 3/3: c.png"]
