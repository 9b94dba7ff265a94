"""Progress in a log file: plain lines with counts, rate and ETA when the console is not a terminal."""

from __future__ import annotations

import io
import re

from rich.console import Console

from tutorlm.progress import StageProgress, format_duration


def test_plain_lines_count_only_this_processes_work_for_the_rate_and_eta():
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False, width=200)
    with StageProgress(console, "generate", 10, every=0.0, detail="{task.fields[hits]} cached", hits=0) as progress:
        progress.fields["hits"] = 4
        progress.start(4)  # found in the cache
        progress.advance(1)
        progress.advance(5)
    lines = sink.getvalue().splitlines()
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] generate: 6 of 10 to do; 4 already done \(cache or checkpoint\)", lines[0])
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] generate 5/10 \(50%\) [\d.]+/s ETA \S+ elapsed \d+s \| 4 cached", lines[1])
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] generate 10/10 \(100%\) [\d.]+/s ETA done elapsed \d+s \| 4 cached", lines[2])
    assert len(lines) == 3  # the closing line is not repeated when the last line already showed 10/10


def test_lines_come_at_most_every_so_often_and_not_at_all_on_a_terminal():
    sink = io.StringIO()
    with StageProgress(Console(file=sink, force_terminal=False), "train", 100, every=3600.0) as progress:
        for _ in range(100):
            progress.advance()
    assert len(sink.getvalue().splitlines()) == 1  # only the closing line
    terminal = io.StringIO()
    with StageProgress(Console(file=terminal, force_terminal=True), "train", 3, every=0.0) as progress:
        progress.advance(3)
    assert "ETA" not in terminal.getvalue()  # a rich bar, not plain lines


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (5, 65, 3700, -1)] == ["5s", "1m05s", "1h01m", "0s"]
