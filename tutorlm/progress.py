"""Progress for long stages: a rich bar in a terminal, plain timestamped lines in a log file.

Rich draws its bars only on a terminal; under `nohup`, a scheduler or `2> log` a 25-minute teacher job
would print nothing until it ends. `StageProgress` prints a line like

    [07:58:02] generate 120/600 (20%) 0.41/s ETA 19m31s | 3,200 tok/s cached 40

every `every` seconds (and at the end) when the console is not a terminal, and a bar otherwise.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def format_duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class StageProgress:
    """Counts work done out of `total`; `detail` (a format string over the fields) follows the counts.

    The rate and ETA count only the work done by this process (`start(done_before)` marks what a cache
    or a checkpoint already had), so a resumed run does not claim an absurd speed, and they are measured from
    the first piece of work done, so loading a model first does not make the rate look slow.
    """

    def __init__(self, console: Console, label: str, total: int, *, detail: str = "", every: float = 30.0,
                 plain: bool | None = None, **fields: Any) -> None:
        self.console, self.label, self.total, self.detail, self.every = console, label, total, detail, every
        self.fields = dict(fields)
        self.plain = (not console.is_terminal) if plain is None else plain
        self.completed = 0
        self._baseline = 0
        self._started = time.perf_counter()
        self._last_line = self._started
        self._line_at: int | None = None  # the count the last plain line showed
        self._first: tuple[float, int] | None = None  # (time, count) at the first advance
        self._progress: Progress | None = None
        self._bar: Any = None

    def __enter__(self) -> "StageProgress":
        self._started = self._last_line = time.perf_counter()
        if not self.plain:
            columns: list[Any] = [TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn()]
            if self.detail:
                columns.append(TextColumn(self.detail))
            columns.append(TimeRemainingColumn())
            self._progress = Progress(*columns, console=self.console)
            self._progress.__enter__()
            self._bar = self._progress.add_task(self.label, total=self.total, **self.fields)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        elif self.total and self.completed > self._baseline and self._line_at != self.completed:
            self._line()  # the final count, unless the last line already showed it

    def start(self, done_before: int, **fields: Any) -> None:
        """Work found done before this process started (cache hits, a checkpoint), and fields to show."""
        self.completed = self._baseline = done_before
        self.fields.update(fields)
        if self._progress is not None:
            self._progress.update(self._bar, completed=done_before, **self.fields)
        else:
            already = f"; {done_before} already done (cache or checkpoint)" if done_before else ""
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {self.label}: {self.total - done_before} of {self.total} "
                               f"to do{already}", highlight=False, markup=False, soft_wrap=True)

    def advance(self, count: int = 1, **fields: Any) -> None:
        now = time.perf_counter()
        self.completed += count
        self.fields.update(fields)
        if self._first is None:  # what came before it includes start-up (loading a model): not counted
            self._first = (now, self.completed)
        if self._progress is not None:
            self._progress.update(self._bar, advance=count, **fields)
            return
        if now - self._last_line >= self.every:
            self._line(now)

    def rate(self, now: float | None = None) -> float:
        """Work per second after the first piece of work was done (0 until there is more)."""
        if self._first is None:
            return 0.0
        since, count = self._first
        elapsed = (now or time.perf_counter()) - since
        return (self.completed - count) / elapsed if elapsed > 0 else 0.0

    def _line(self, now: float | None = None) -> None:
        now = now or time.perf_counter()
        self._last_line, self._line_at = now, self.completed
        rate = self.rate(now)
        share = self.completed / self.total if self.total else 1.0
        left = self.total - self.completed
        eta = format_duration(left / rate) if rate > 0 and left > 0 else ("done" if left <= 0 else "?")
        extra = ""
        if self.detail:
            try:
                extra = " | " + self.detail.format(task=_Fields(self.fields))
            except (KeyError, AttributeError, ValueError, IndexError):
                extra = ""
        stamp = time.strftime("%H:%M:%S")
        self.console.print(f"[{stamp}] {self.label} {self.completed}/{self.total} ({share:.0%}) {rate:.2f}/s "
                           f"ETA {eta} elapsed {format_duration(now - self._started)}{extra}",
                           highlight=False, markup=False, soft_wrap=True)


class _Fields:
    """Lets a rich column format string ("{task.fields[rate]:.1f}") format the same fields in a plain line."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
