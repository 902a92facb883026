"""The runner's error path: typed errors that carry the command and the tail of stderr."""

import logging
from pathlib import Path

import pytest

from imagemode.run import RunError, ToolMissingError, run, spawn


def test_success_captures_stdout() -> None:
    assert run(["sh", "-c", "echo hello"]).stdout == "hello\n"


def test_failure_carries_command_status_and_stderr_tail() -> None:
    with pytest.raises(RunError) as e:
        run(["sh", "-c", "for i in $(seq 1 30); do echo line$i >&2; done; exit 3"])
    err = e.value
    assert err.returncode == 3
    assert err.cmd[0] == "sh"
    assert "line30" in err.stderr_tail
    assert "line1\n" not in err.stderr_tail  # only the tail is kept
    assert str(err) == "sh failed with exit status 3: line30"
    assert "\n" not in str(err)


def test_disk_full_is_named() -> None:
    with pytest.raises(RunError, match="No space left on device"):
        run(["sh", "-c", "echo 'write error: No space left on device' >&2; exit 1"])


def test_missing_tool_names_its_package() -> None:
    with pytest.raises(ToolMissingError, match=r"^mmdebstrap-nope is not installed$"):
        run(["mmdebstrap-nope"])
    with pytest.raises(ToolMissingError, match="apt-get install qemu-utils"):
        run(["/nonexistent/qemu-img"])


def test_check_false_and_success_codes() -> None:
    assert run(["sh", "-c", "exit 4"], check=False).returncode == 4
    assert run(["sh", "-c", "exit 4"], success=(0, 4)).returncode == 4


def test_streams_lines_and_input() -> None:
    seen: list[str] = []
    out = run(["sh", "-c", "cat; echo err >&2"], input="in\n", on_line=seen.append)
    assert out.stdout == "in\n"
    assert seen == ["err"]


def test_timeout_kills() -> None:
    with pytest.raises(RunError, match="timed out"):
        run(["sleep", "30"], timeout=0.5)


def test_env_is_added() -> None:
    assert run(["sh", "-c", "echo $IMAGEMODE_T"], env={"IMAGEMODE_T": "x"}).stdout == "x\n"


def test_watchdog_stops_a_hung_program() -> None:
    calls = []

    def watch() -> str | None:
        calls.append(1)
        return "No space left on device: /x is full" if len(calls) >= 2 else None

    with pytest.raises(
        RunError, match=r"^sleep failed with exit status -9: No space left on device: /x is full$"
    ):
        run(["sleep", "30"], watchdog=watch)


def test_secrets_are_redacted_in_logs_and_errors() -> None:
    from imagemode.run import RunError, redacted

    line = redacted(
        ["skopeo", "copy", "--dest-creds=u:pw", "--creds", "u:pw2", "usermod", "--password", "$6$h"]
    )
    assert "pw" not in line.replace("--password", "") and "$6$h" not in line
    assert line.count("***") == 3
    assert "u:pw" not in RunError(["skopeo", "--src-creds=u:pw"], 1, "").command_line


def test_what_the_kernel_would_not_run_is_named_before_systemd_run(tmp_path: Path) -> None:
    from imagemode.run import _not_executable

    (tmp_path / "text").write_text("not a program\n")
    (tmp_path / "script").write_text("#!/bin/sh\nexit 0\n")
    assert _not_executable(str(tmp_path / "text")) == "Exec format error"
    assert _not_executable(str(tmp_path / "script")) == ""
    assert _not_executable("/bin/sh") == ""
    assert _not_executable(str(tmp_path / "absent")) == "No such file or directory"


def test_spawn_is_logged_like_run(caplog: pytest.LogCaptureFixture) -> None:
    """What keeps running (QEMU, a registry) is started by spawn(), and -v shows its command line."""
    with caplog.at_level(logging.DEBUG, logger="imagemode.run"):
        proc = spawn(["sleep", "0"])
        assert proc.wait(10) == 0
    assert "run: sleep 0" in caplog.text
    with pytest.raises(ToolMissingError):
        spawn(["imagemode-no-such-program"])
