"""The one place that spawns external programs.

Every tool (mmdebstrap, podman, skopeo, ostree, ...) is called through `run()`, and what keeps running
(QEMU, the test registry) is started by `spawn()`, which `run()` is built on. It logs the command,
captures or streams the output, keeps the tail of stderr, and turns a failure into a `RunError` that
carries the command and that tail. No shell strings: arguments are always a list.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from imagemode.errors import ImagemodeError

log = logging.getLogger("imagemode.run")

PathString = str | os.PathLike[str]

# Which Debian package brings each program, so that a missing tool names its fix.
PACKAGE_OF = {
    "mmdebstrap": "mmdebstrap",
    "podman": "podman",
    "buildah": "buildah",
    "skopeo": "skopeo",
    "ostree": "ostree",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-query": "dpkg",
    "depmod": "kmod",
    "systemctl": "systemd",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "socat": "socat",
    "docker-registry": "docker-registry",
    "sgdisk": "gdisk",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
}

STDERR_TAIL_LINES = 12
# Flags whose value is a secret. imagemode passes none of them (credentials go in 0600 files, password
# hashes on stdin), so this only guards a log line against a caller that one day does.
SECRET_FLAGS = ("--creds", "--src-creds", "--dest-creds", "--registry-token", "--password", "--passphrase")


def redacted(argv: Sequence[str]) -> str:
    """A command line fit for a log or an error: every secret flag's value replaced."""
    out: list[str] = []
    hide_next = False
    for a in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        flag, eq, _ = a.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}=***")
            else:
                out.append(a)
                hide_next = True
            continue
        out.append(a)
    return shlex.join(out)


class RunError(ImagemodeError):
    """An external program failed: carries the command, its exit status and the tail of its stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr_tail: str, stdout: str = "") -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.stdout = stdout
        # A full disk is the cause whatever else the tool printed after it: name it.
        enospc = [ln.strip() for ln in stderr_tail.splitlines() if "No space left on device" in ln]
        last = enospc[0] if enospc else _last_meaningful_line(stderr_tail)
        detail = f": {last}" if last else ""
        super().__init__(f"{Path(self.cmd[0]).name} failed with exit status {returncode}{detail}")

    @property
    def command_line(self) -> str:
        return redacted(self.cmd)


class ToolMissingError(ImagemodeError):
    """A program that imagemode needs is not installed."""

    def __init__(self, program: str) -> None:
        self.program = program
        package = PACKAGE_OF.get(Path(program).name)
        hint = f"; install it with: apt-get install {package}" if package else ""
        super().__init__(f"{program} is not installed{hint}")


def _last_meaningful_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _pump(
    stream: IO[str],
    sink: list[str] | None,
    tail: collections.deque[str] | None,
    on_line: Callable[[str], None] | None,
) -> None:
    for line in stream:
        if sink is not None:
            sink.append(line)
        if tail is not None:
            tail.append(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    stream.close()


Stream = int | IO[Any] | None  # what Popen takes for stdin, stdout, stderr


def spawn(
    cmd: Sequence[PathString],
    *,
    stdin: Stream = subprocess.DEVNULL,
    stdout: Stream = subprocess.PIPE,
    stderr: Stream = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    cwd: PathString | None = None,
    text: bool = False,
) -> subprocess.Popen[Any]:
    """Start `cmd` and return it running, logged as `run()` logs: for what outlives one call (QEMU, a
    registry), and for run() itself. env: variables added to the current environment."""
    argv = [os.fspath(c) for c in cmd]
    log.debug("run: %s", redacted(argv))
    try:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            cwd=os.fspath(cwd) if cwd is not None else None,
            text=text,
            errors="replace" if text else None,
        )
    except FileNotFoundError as e:
        raise ToolMissingError(argv[0]) from e


def run(
    cmd: Sequence[PathString],
    *,
    check: bool = True,
    capture: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: PathString | None = None,
    success: Sequence[int] = (0,),
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
    watchdog: Callable[[], str | None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` and return its completed process.

    capture: keep stdout in the result; otherwise stdout goes to `on_line` (or to the log).
    on_line: receives every line of stderr (and of stdout when not captured) as it arrives, for progress.
    env: variables added to the current environment.
    watchdog: polled every second; a message it returns stops the program and becomes the error. Some
      tools hang rather than fail when their disk fills (apt-get does), so long steps watch the disk.
    """
    argv = [os.fspath(c) for c in cmd]
    stdout_lines: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    def logline(line: str) -> None:
        log.debug("  %s: %s", Path(argv[0]).name, line)

    sink = on_line or logline
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    proc = spawn(argv, stdin=stdin, env=env, cwd=cwd, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, stdout_lines, None, None if capture else sink)),
        threading.Thread(target=_pump, args=(proc.stderr, None, tail, sink)),
    ]
    for t in threads:
        t.start()
    if input is not None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(input)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                returncode = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                reason = watchdog() if watchdog is not None else None
                if reason is None and deadline is not None and time.monotonic() > deadline:
                    reason = f"timed out after {timeout:.0f}s"
                if reason is not None:
                    proc.kill()
                    proc.wait()
                    for t in threads:
                        t.join()
                    raise RunError(argv, -9, "".join(tail) + f"\n{reason}") from None
    except BaseException:
        # Ctrl-C or similar: never leave the child behind.
        proc.kill()
        proc.wait()
        raise
    for t in threads:
        t.join()
    stdout = "".join(stdout_lines)
    stderr_tail = "".join(tail)
    if check and returncode not in success:
        raise RunError(argv, returncode, stderr_tail, stdout)
    return subprocess.CompletedProcess(argv, returncode, stdout, stderr_tail)


def run_interactive(cmd: Sequence[PathString]) -> int:
    """Run a program on this terminal (an SSH session, say) and return its exit status."""
    argv = [os.fspath(c) for c in cmd]
    log.debug("run (interactive): %s", redacted(argv))
    try:
        return subprocess.call(argv)
    except FileNotFoundError as e:
        raise ToolMissingError(argv[0]) from e


def disk_watchdog(path: PathString, min_free: int = 1 << 20) -> Callable[[], str | None]:
    """A watchdog that stops a program once the filesystem holding `path` is full."""

    def check() -> str | None:
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        if st.f_bavail * st.f_frsize < min_free:
            return f"No space left on device: {os.fspath(path)} is full"
        return None

    return check


def which(program: str) -> str | None:
    """The path of `program` on PATH, or None."""
    return shutil.which(program)


@dataclass(frozen=True)
class Confined:
    """How a program run by `run_confined` ended."""

    returncode: int | None  # None: it did not finish in time, or could not start
    output: bytes  # the tail of stdout and stderr together
    seconds: float
    error: str = ""  # why it did not run or finish


def _tail_pump(stream: IO[bytes], buf: bytearray, keep: int) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        buf.extend(chunk)
        del buf[:-keep]


_scopes = itertools.count()


def _scope_name() -> str:
    return f"imagemode-check-{os.getpid()}-{next(_scopes)}"


def _systemd_runs() -> bool:
    return os.geteuid() == 0 and os.path.isdir("/run/systemd/system") and which("systemd-run") is not None


def _not_executable(program: str) -> str:
    """Why the kernel would not run `program` (a script without `#!`, not an ELF file), or ""."""
    try:
        with open(program, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return e.strerror or str(e)
    return "" if head[:2] == b"#!" or head == b"\x7fELF" else os.strerror(errno.ENOEXEC)


def run_confined(
    cmd: Sequence[PathString],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    keep: int = 4096,
    grace: float = 2.0,
    scope: bool = False,
) -> Confined:
    """Run a program nobody vouches for (a health check script) without letting it hold us up.

    It gets its own session, so a timeout stops its whole process group (a shell script's `sleep`
    included). Only the last `keep` bytes of its output stay in memory, whatever it prints. Nothing
    raises: a program that cannot start (not executable, not a program) ends with `error` set.

    scope: where systemd runs the machine, the program also gets a transient scope unit, its own
    cgroup, and a timeout kills the whole cgroup. A child that left the session (`setsid`, a daemon)
    is in the cgroup still, so nothing it started outlives the timeout.
    """
    argv = [os.fspath(c) for c in cmd]
    unit = _scope_name() if scope and _systemd_runs() else None
    if unit is not None:
        # systemd-run execs the program itself and says only "exit 1" when that fails, so what the
        # kernel would refuse is refused here first, in the kernel's words.
        why = _not_executable(argv[0])
        if why:
            return Confined(None, b"", 0.0, why)
        argv = ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={unit}", "--", *argv]
    log.debug("run (confined, %.0fs): %s", timeout, redacted(argv))
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
    except OSError as e:
        return Confined(None, b"", time.monotonic() - t0, e.strerror or str(e))
    assert proc.stdout is not None
    buf = bytearray()
    reader = threading.Thread(target=_tail_pump, args=(proc.stdout, buf, keep), daemon=True)
    reader.start()
    error = ""
    try:
        returncode: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        returncode, error = None, f"timed out after {timeout:g}s"
        if unit is not None:
            run(["systemctl", "kill", "--signal=SIGKILL", f"{unit}.scope"], check=False)
        for sig, wait in ((15, grace), (9, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    # A descendant that left the session can keep the pipe open; do not wait for it.
    reader.join(grace)
    return Confined(returncode, bytes(buf), time.monotonic() - t0, error)
