"""Progress for long work: one line per step with its time, a live status line on a terminal.

rich draws the live line when it is importable and stderr is a terminal; otherwise plain lines go to
stderr, which is what logs and CI want. The device's python3 may lack rich, so it stays optional.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any


class Progress:
    def __init__(self, total_steps: int, *, quiet: bool = False) -> None:
        self.total = total_steps
        self.index = 0
        self.quiet = quiet
        self.started = time.monotonic()
        self.timings: list[tuple[str, float, str]] = []
        self._status: Any = None
        self._live = sys.stderr.isatty() and not quiet
        self._console: Any = None
        if self._live:
            try:
                from rich.console import Console

                self._console = Console(stderr=True)
            except ImportError:
                self._live = False

    def _print(self, text: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, summary: str = "") -> Iterator[None]:
        self.index += 1
        label = f"[{self.index}/{self.total}] {name}"
        t0 = time.monotonic()
        if self._console is not None:
            self._status = self._console.status(f"{label}: {summary}")
            self._status.start()
        else:
            self._print(f"{label}: {summary}".rstrip(": "))
        outcome = "failed"
        try:
            yield
            outcome = "done"
        finally:
            dt = time.monotonic() - t0
            if self._status is not None:
                self._status.stop()
                self._status = None
            self.timings.append((name, dt, outcome))
            self._print(f"{label}: {outcome} in {dt:.1f}s")

    def skipped(self, name: str, why: str) -> None:
        self.index += 1
        self.timings.append((name, 0.0, "cached"))
        self._print(f"[{self.index}/{self.total}] {name}: {why}")

    def line(self, text: str) -> None:
        """A line of a tool's output: shown live on a terminal, dropped otherwise (the log keeps it)."""
        if self._status is not None:
            self._status.update(f"[{self.index}/{self.total}] {text[:100]}")

    def done(self, what: str) -> float:
        total = time.monotonic() - self.started
        self._print(f"{what} in {total:.1f}s")
        return total


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class Transfer:
    """Bytes coming in: a bar with bytes, rate and ETA on a terminal; a line every 30 s otherwise."""

    def __init__(self, what: str, *, quiet: bool = False, stream: Any = None) -> None:
        self.what = what
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._logged = 0.0
        self._finished = False

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        if self.quiet or self._finished:
            return
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        if self.tty:
            width = 24
            filled = width if not total else int(width * done / total)
            self.stream.write(
                f"\r{self.what} [{'#' * filled}{'.' * (width - filled)}] {human_size(done)} / "
                f"{human_size(total)}  {human_size(rate)}/s  ETA {_clock(eta)}  "
            )
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
        elif done >= total or elapsed - self._logged >= 30:
            self._logged = elapsed
            line = f"{self.what}: {human_size(done)} of {human_size(total)} in {elapsed:.0f}s"
            print(line, file=sys.stderr)
        self._finished = done >= total
