"""How every verb prints its result: as JSON with --json, else for people (nothing with --quiet)."""

from __future__ import annotations

import json
from typing import Any, Protocol


class Result(Protocol):
    """What a verb's handler returns: one value, shown either way."""

    def to_dict(self) -> Any: ...
    def human(self) -> str: ...


def emit(result: Result, args: object) -> None:
    """`args`: the parsed options; only their `json` and `quiet` are read."""
    if getattr(args, "json", False):
        print(json.dumps(result.to_dict(), indent=2))
    elif not getattr(args, "quiet", False):
        text = result.human()
        if text:
            print(text)
