"""Which auth.json a device uses, and the refusal of one that others can read."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagemode.oci import auth


def test_ostree_locations_come_first_then_containers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "OSTREE_AUTH_FILES", (tmp_path / "run/auth.json", tmp_path / "etc/auth.json"))
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    assert auth.find(env) is None
    containers = tmp_path / "xdg/containers/auth.json"
    containers.parent.mkdir(parents=True)
    containers.write_text("{}")
    containers.chmod(0o600)
    assert auth.find(env) == containers
    etc = tmp_path / "etc/auth.json"
    etc.parent.mkdir()
    etc.write_text("{}")
    etc.chmod(0o600)
    assert auth.find(env) == etc  # ostree's own location wins, as in bootc


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "auth.json"
    f.write_text("{}")
    f.chmod(mode)
    with pytest.raises(auth.AuthFileError, match=f"open to other users \\(mode {mode:04o}\\).*chmod 600"):
        auth.check_private(f)


def test_registry_auth_file_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "OSTREE_AUTH_FILES", ())
    f = tmp_path / "mine.json"
    f.write_text("{}")
    f.chmod(0o400)
    assert auth.find({"REGISTRY_AUTH_FILE": str(f), "HOME": str(tmp_path)}) == f


def test_a_link_or_another_owners_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("{}")
    real.chmod(0o600)
    link = tmp_path / "auth.json"
    link.symlink_to(real)
    with pytest.raises(auth.AuthFileError, match="is a symlink; refusing it"):
        auth.check_private(link)
    import os

    os.chown(real, 1000, 1000)
    with pytest.raises(auth.AuthFileError, match="is owned by uid 1000, not 0; refusing it"):
        auth.check_private(real)


def test_push_credentials_go_in_a_private_file_not_on_the_command_line() -> None:
    import json
    import stat

    with auth.temporary("127.0.0.1:5000", "user", "s3cret") as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = json.loads(path.read_text())
        assert list(data["auths"]) == ["127.0.0.1:5000"]
        assert "s3cret" not in path.read_text()  # base64 of user:password, as auth.json has it
    assert not path.exists()
