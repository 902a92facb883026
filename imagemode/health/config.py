"""Health settings: /usr/lib/imagemode/health.toml from the image, /etc/imagemode/health.toml from the
device (its keys win). Both optional.

    tries = 3          # boots a new deployment gets to reach a healthy boot (1 to 9)
    timeout = 900      # seconds a check script may run before it counts as failed
    [timeouts]         # per script, by file name
    "40-microshift.sh" = 900

greenboot's /etc/greenboot/greenboot.conf is read too, as greenboot reads it (shell assignments):
GREENBOOT_MAX_BOOT_ATTEMPTS gives tries unless a health.toml says them, and the scripts named in
DISABLED_HEALTHCHECKS do not run (fleet agents rewrite that list at every boot).
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from imagemode.boot import grubenv
from imagemode.errors import ImagemodeError

FILES = ("usr/lib/imagemode/health.toml", "etc/imagemode/health.toml")
GREENBOOT_CONF = "etc/greenboot/greenboot.conf"
DEFAULT_TRIES = 3
# MicroShift's greenboot check waits up to 600 s for its pods by default: a default under that kills
# it on a slow first start and rolls a good update back. 900 s is that wait and a margin.
DEFAULT_TIMEOUT = 900.0


@dataclass(frozen=True)
class HealthConfig:
    tries: int = DEFAULT_TRIES
    timeout: float = DEFAULT_TIMEOUT
    timeouts: dict[str, float] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()  # scripts that do not run (greenboot's DISABLED_HEALTHCHECKS)

    def timeout_of(self, name: str) -> float:
        return self.timeouts.get(name, self.timeout)


def _number(path: Path, key: str, value: object, high: float, whole: bool = False) -> float:
    ok = isinstance(value, int) if whole else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not 1 <= value <= high:  # type: ignore[operator]
        kind = "a whole number" if whole else "a number"
        raise ImagemodeError(f"{path}: {key} must be {kind} from 1 to {high:g}, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def greenboot(path: Path) -> tuple[int | None, frozenset[str]]:
    """GREENBOOT_MAX_BOOT_ATTEMPTS and DISABLED_HEALTHCHECKS from greenboot.conf, a shell file of
    assignments (the list a bash array: `("a.sh" "b.sh")`). Other lines are greenboot's business."""
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None, frozenset()
    tries: int | None = None
    disabled: frozenset[str] = frozenset()
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if not sep or name.startswith("#"):
            continue
        try:
            words = shlex.split(value.strip().removeprefix("(").removesuffix(")"), comments=True)
        except ValueError as e:
            raise ImagemodeError(f"{path}: {name}: {e}") from None
        if name == "GREENBOOT_MAX_BOOT_ATTEMPTS":
            if len(words) != 1 or not words[0].isdigit():
                raise ImagemodeError(f"{path}: GREENBOOT_MAX_BOOT_ATTEMPTS must be a number, not {value!r}")
            tries = int(_number(path, name, int(words[0]), grubenv.MAX_TRIES, whole=True))
        elif name == "DISABLED_HEALTHCHECKS":
            disabled = frozenset(words)
    return tries, disabled


def load(root: Path = Path("/")) -> HealthConfig:
    tries, timeout = DEFAULT_TRIES, DEFAULT_TIMEOUT
    timeouts: dict[str, float] = {}
    gb_tries, disabled = greenboot(root / GREENBOOT_CONF)
    tries_said = False
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
            tries_said = True
        if "timeout" in data:
            timeout = _number(path, "timeout", data["timeout"], 86400)
        table = data.get("timeouts", {})
        if not isinstance(table, dict):
            raise ImagemodeError(f"{path}: timeouts must be a table of script name = seconds")
        for name, secs in table.items():
            timeouts[name] = _number(path, f"timeouts.{name}", secs, 86400)
    if gb_tries is not None and not tries_said:
        tries = gb_tries
    return HealthConfig(tries, timeout, timeouts, disabled)
