"""Health checks: find them (greenboot's directory layout), run them confined, and say what each did.

Scripts live in `check/required.d` and `check/wanted.d`; `green.d` and `red.d` hold scripts run after a
healthy or a failed verdict. Each directory is looked up under, in this order:

    /etc/imagemode            the device's own (wins on a name clash)
    /etc/greenboot            greenboot's, read as they are
    /usr/lib/imagemode        the image's
    /usr/lib/greenboot

A script of the same name in an earlier directory replaces a later one, and a symbolic link to
/dev/null there masks it, as systemd does with units. A systemd unit that boot-complete.target requires
(`RequiredBy=boot-complete.target`) is a required check too, one that it wants a wanted check.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagemode.health.config import HealthConfig
from imagemode.run import RunError, run, run_confined

ROOTS = ("etc/imagemode", "etc/greenboot", "usr/lib/imagemode", "usr/lib/greenboot")


class Kind(enum.StrEnum):
    REQUIRED = "required"  # a failure fails the boot
    WANTED = "wanted"  # a failure warns
    GREEN = "green"  # hooks run after a healthy verdict
    RED = "red"  # hooks run after a failed one


class Status(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # a required check (or hook)
    WARNED = "warned"  # a wanted one


SUBDIR = {Kind.REQUIRED: "check/required.d", Kind.WANTED: "check/wanted.d", Kind.GREEN: "green.d",
          Kind.RED: "red.d"}  # fmt: skip
TARGET = "boot-complete.target"
OUTPUT_KEEP = 2048  # bytes of a check's output kept in results (its tail)
BASH = "/bin/bash"


@dataclass(frozen=True)
class Check:
    name: str
    kind: Kind
    path: Path


@dataclass(frozen=True)
class Result:
    name: str
    kind: str  # a Kind (a plain string once read back from a record)
    source: str  # the script's path, or "unit"
    status: str  # a Status, likewise
    reason: str  # "", "exit 1", "timed out after 300s", "not executable", ...
    seconds: float
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for the journal and the terminal."""
        out = self.output.strip().splitlines()
        tail = f": {out[-1][:200]}" if out and self.status != Status.PASSED else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.kind} {self.name}: {self.status}{why}{tail}"

    def journal_line(self, journal: bool) -> str:
        """The line as it happens. Under systemd (`journal`) a "<N>" prefix sets its journal priority:
        failures are errors, warnings warnings."""
        prio = {Status.PASSED: "<6>", Status.WARNED: "<4>", Status.FAILED: "<3>"}
        return f"{prio.get(Status(self.status), '') if journal else ''}{self.line()}"


def clean_output(data: bytes) -> str:
    """Printable text from whatever a script wrote: invalid UTF-8 and control characters become '?'."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    return "".join(c if (c.isprintable() and c != "\ufffd") or c in "\n\t" else "?" for c in text)


def _masked(path: Path) -> bool:
    return path.is_symlink() and os.path.realpath(path) == os.devnull


def discover(kind: Kind, root: Path = Path("/")) -> list[Check]:
    """The scripts of one kind, by name; an earlier root's file of the same name wins."""
    found: dict[str, Check | None] = {}
    for base in ROOTS:
        d = root / base / SUBDIR[kind]
        try:
            entries = sorted(d.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for p in entries:
            if p.name.startswith(".") or p.name.endswith("~") or p.name in found:
                continue
            if _masked(p):
                found[p.name] = None
            elif p.is_file():
                found[p.name] = Check(p.name, kind, p)
    return [c for _, c in sorted(found.items()) if c is not None]


def _bad(kind: str) -> str:
    return Status.FAILED if kind in (Kind.REQUIRED, Kind.RED, Kind.GREEN) else Status.WARNED


def run_script(check: Check, timeout: float, env: dict[str, str] | None = None) -> Result:
    t0 = time.monotonic()
    argv: list[str | Path] = [check.path]
    if not os.access(check.path, os.X_OK):
        if check.name.endswith(".sh"):
            argv = [BASH, check.path]  # as greenboot runs them: a script copied in without its x bit
        else:
            mode = check.path.stat().st_mode & 0o7777
            return Result(check.name, check.kind, str(check.path), _bad(check.kind),
                          f"not executable (mode {mode:04o})", 0.0)  # fmt: skip
    env = {"IMAGEMODE_CHECK": check.kind, **(env or {})}
    r = run_confined(argv, timeout=timeout, env=env, keep=OUTPUT_KEEP, scope=True)
    output = clean_output(r.output)
    if r.returncode == 0:
        return Result(
            check.name, check.kind, str(check.path), Status.PASSED, "", round(r.seconds, 2), output
        )
    if r.error or r.returncode is None:
        reason = r.error or "did not finish"
    else:
        reason = f"exit {r.returncode}" if r.returncode > 0 else f"killed by signal {-r.returncode}"
    return Result(check.name, check.kind, str(check.path), _bad(check.kind), reason,
                  round(time.monotonic() - t0, 2), output)  # fmt: skip


def run_scripts(
    checks: Iterable[Check],
    config: HealthConfig,
    env: dict[str, str] | None = None,
    on_result: Callable[[Result], None] = lambda r: None,
    stop_at_failure: bool = False,
) -> list[Result]:
    """One after another, in name order: a check may rely on what an earlier one waited for. The
    disabled ones (greenboot.conf) do not run. `stop_at_failure`: the first failure ends the run, as
    greenboot's required checks do (the verdict is known; the rest would only delay the rollback)."""
    results = []
    for c in checks:
        if c.name in config.disabled:
            continue
        r = run_script(c, config.timeout_of(c.name), env)
        on_result(r)
        results.append(r)
        if stop_at_failure and r.status == Status.FAILED:
            break
    return results


def _show(units: list[str], props: str) -> list[dict[str, str]]:
    out = run(["systemctl", "show", "-p", props, "--", *units]).stdout
    blocks = []
    for block in out.split("\n\n"):
        kv = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        blocks.append(kv)
    return blocks


def unit_checks(own: str = "imagemode-health.service") -> list[Result]:
    """Units ordered before boot-complete.target that it requires (required checks) or wants (wanted).

    Read after the target's start job ended (imagemode-health.service is ordered after it), so each
    has its result. Targets are not checks: boot-complete.target itself requires sysinit.target.
    """
    try:
        deps = _show([TARGET], "Requires,Requisite,BindsTo,Wants,After")[0]
    except (RunError, IndexError):
        return []
    before = set(deps.get("After", "").split())  # what the target is after: the units ordered before it
    kinds: dict[str, str] = {}
    for prop in ("Wants", "Requires", "Requisite", "BindsTo"):
        for unit in deps.get(prop, "").split():
            if unit != own and unit in before and not unit.endswith(".target"):
                kinds[unit] = Kind.WANTED if prop == "Wants" else Kind.REQUIRED
    if not kinds:
        return []
    names = sorted(kinds)
    results = []
    for unit, st in zip(names, _show(names, "ActiveState,SubState,Result,LoadState"), strict=False):
        ok = st.get("ActiveState") != "failed" and st.get("Result", "success") == "success"
        if st.get("LoadState") == "not-found":
            ok, why = False, "not found"
        else:
            why = "" if ok else f"{st.get('ActiveState')} ({st.get('Result')})"
        status = Status.PASSED if ok else _bad(kinds[unit])
        results.append(Result(unit, kinds[unit], "unit", status, why, 0.0))
    return results


def verdict(results: Iterable[Result]) -> Result | None:
    """The first failed required check: None means healthy."""
    return next((r for r in results if r.kind == Kind.REQUIRED and r.status == Status.FAILED), None)
