"""`--progress-fd N`: an update's progress as bootc's progress-v0 JSON lines, for agents and UIs.

One object per line on descriptor N (a pipe the caller opened): `Start`, then `ProgressSteps` for the
three steps bootc names (pulling, importing, staging) and `ProgressBytes` while layers arrive, each
missing layer a subtask with its bytes. progress-v0 has no end event: the last line is the staging
step with every subtask completed, and the descriptor closes when the verb exits (its exit status
says how it ended; docs/bootc-differences.md).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from imagemode.errors import ImagemodeError

VERSION = "0.1.0"
STEPS = ("pulling", "importing", "staging")
STAGING = ("etc", "bound_images", "deploying", "cleanup")  # the staging step's subtasks, in order
BYTES_EVERY = 0.5  # seconds between byte events: enough for a bar, little for a pipe


class ProgressFdError(ImagemodeError):
    pass


def _open(fd: int) -> IO[str]:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ProgressFdError(f"--progress-fd {fd}: not an open file descriptor") from None
    if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ProgressFdError(f"--progress-fd {fd}: not a pipe or a file")
    return os.fdopen(fd, "w", encoding="utf-8", closefd=False)


class Events:
    """Writes the events; with no descriptor, nothing (every update takes one, used or not)."""

    def __init__(self, fd: int | None = None) -> None:
        self._out = _open(fd) if fd is not None else None
        self._layers: dict[str, int] = {}  # digest -> size, of the layers being fetched
        self._image = ""
        self._last = 0.0

    def _emit(self, event: Mapping[str, Any]) -> None:
        if self._out is None:
            return
        try:
            self._out.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._out.flush()
        except BrokenPipeError:
            self._out = None  # the reader left: the update goes on without it

    def start(self) -> None:
        self._emit({"type": "Start", "version": VERSION})

    def step(self, index: int, image: str, subtasks: Sequence[tuple[str, str, bool]] = ()) -> None:
        """Step `index` of STEPS (0 pulling, 1 importing, 2 staging) has begun; `subtasks`: (subtask,
        id, completed)."""
        self._image = image or self._image
        self._emit({
            "type": "ProgressSteps", "task": STEPS[index], "description": f"{STEPS[index]} {self._image}",
            "id": self._image, "stepsCached": 0, "steps": index, "stepsTotal": len(STEPS),
            "subtasks": [{"subtask": s, "description": s.replace("_", " "), "id": i, "completed": done}
                         for s, i, done in subtasks],
        })  # fmt: skip

    def layers(self, sizes: Mapping[str, int]) -> None:
        """The layers the pull fetches: digest -> compressed size."""
        self._layers = dict(sizes)

    def bytes(self, per_layer: Mapping[str, int], in_flight: int = 0, force: bool = False) -> None:
        """Bytes written so far, per layer digest, and `in_flight` into layers not yet whole (counted in
        the total alone); at most every BYTES_EVERY seconds unless `force`."""
        now = time.monotonic()
        if not force and now - self._last < BYTES_EVERY:
            return
        self._last = now
        got = {d: min(per_layer.get(d, 0), size) for d, size in self._layers.items()}
        total = sum(self._layers.values())
        subtasks = [
            {"subtask": "layer", "description": "Layer", "id": d, "bytesCached": 0, "bytes": got[d],
             "bytesTotal": size}
            for d, size in self._layers.items()
        ]  # fmt: skip
        self._emit({
            "type": "ProgressBytes", "task": "pulling", "description": f"pulling {self._image}",
            "id": self._image, "bytesCached": 0, "bytes": min(sum(got.values()) + in_flight, total),
            "bytesTotal": total, "stepsCached": 0,
            "steps": sum(1 for d, size in self._layers.items() if got[d] >= size),
            "stepsTotal": len(subtasks), "subtasks": subtasks,
        })  # fmt: skip

    def importing(self, done: int, total: int) -> None:
        """The importing step with `done` of `total` layers in the store."""
        self.step(1, "", [("layer", f"{k}/{total}", k <= done) for k in range(1, total + 1)])

    def staging(self, done: int, image: str = "") -> None:
        """The staging step with its first `done` subtasks (of STAGING) completed."""
        self.step(2, image, [(s, s, i < done) for i, s in enumerate(STAGING)])
