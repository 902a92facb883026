"""Health settings: /usr/lib/imagemode/health.toml from the image, /etc/imagemode/health.toml from the
device (its keys win). Both optional.

    tries = 3          # boots a new deployment gets to reach a healthy boot (1 to 9)
    timeout = 300      # seconds a check script may run before it counts as failed
    [timeouts]         # per script, by file name
    "40-microshift.sh" = 900
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from imagemode.boot import grubenv
from imagemode.errors import ImagemodeError

FILES = ("usr/lib/imagemode/health.toml", "etc/imagemode/health.toml")
DEFAULT_TRIES = 3
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class HealthConfig:
    tries: int = DEFAULT_TRIES
    timeout: float = DEFAULT_TIMEOUT
    timeouts: dict[str, float] = field(default_factory=dict)

    def timeout_of(self, name: str) -> float:
        return self.timeouts.get(name, self.timeout)


def _number(path: Path, key: str, value: object, high: float, whole: bool = False) -> float:
    ok = isinstance(value, int) if whole else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not 1 <= value <= high:  # type: ignore[operator]
        kind = "a whole number" if whole else "a number"
        raise ImagemodeError(f"{path}: {key} must be {kind} from 1 to {high:g}, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def load(root: Path = Path("/")) -> HealthConfig:
    tries, timeout = DEFAULT_TRIES, DEFAULT_TIMEOUT
    timeouts: dict[str, float] = {}
    for rel in FILES:
        path = root / rel
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ImagemodeError(f"{path}: {e}") from None
        unknown = set(data) - {"tries", "timeout", "timeouts"}
        if unknown:
            raise ImagemodeError(f"{path}: unknown key {sorted(unknown)[0]!r} (tries, timeout, timeouts)")
        if "tries" in data:
            tries = int(_number(path, "tries", data["tries"], grubenv.MAX_TRIES, whole=True))
        if "timeout" in data:
            timeout = _number(path, "timeout", data["timeout"], 86400)
        table = data.get("timeouts", {})
        if not isinstance(table, dict):
            raise ImagemodeError(f"{path}: timeouts must be a table of script name = seconds")
        for name, secs in table.items():
            timeouts[name] = _number(path, f"timeouts.{name}", secs, 86400)
    return HealthConfig(tries, timeout, timeouts)
