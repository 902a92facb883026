"""config.toml: the table of keys, unknown keys named, sizes, password and key checks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imagemode.disk import config
from imagemode.disk.image import MiB, root_size


def load(tmp_path: Path, text: str) -> config.DiskConfig:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return config.load(p)


def test_full_config(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    key = (tmp_path / "k.pub").read_text().strip()
    cfg = load(
        tmp_path,
        f"""
[[customizations.user]]
name = "edge"
password = "$6$salt$abcdefghijklmnop"
key = "{key}"
groups = ["sudo", "adm"]

[customizations.kernel]
append = "quiet loglevel=3"

[[customizations.filesystem]]
mountpoint = "/"
minsize = "10 GiB"

[install]
enforce-container-sigpolicy = true
""",
    )
    assert cfg.users == (config.User("edge", "$6$salt$abcdefghijklmnop", key, ("sudo", "adm")),)
    assert cfg.kernel_append == ("quiet", "loglevel=3")
    assert cfg.root_minsize == 10 * 1024**3
    assert cfg.enforce is True
    assert config.DiskConfig().enforce is None  # not set: the image's install config decides


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[customizations.kernel]\nappendd = 'x'\n", "unknown key customizations.kernel.appendd"),
        ("[[customizations.user]]\nname = 'a'\npasswd = 'x'\n", "unknown key customizations.user[0].passwd"),
        ("[customization]\n", "unknown key customization"),
        ("[customizations.kernel]\nappend = 3\n", "customizations.kernel.append must be a str"),
        ("[[customizations.user]]\nname = 'a'\npassword = 'secret'\n", "must be a crypt(3) hash"),
        ("[[customizations.user]]\nname = 'a'\nkey = 'ssh-rsa nope'\n", "SSH public key does not parse"),
        ("[[customizations.filesystem]]\nmountpoint = '/var'\n", 'only mountpoint = "/"'),
        ("[[customizations.filesystem]]\nmountpoint = '/'\nminsize = 'big'\n", "is not a size"),
        ("not toml [", "not valid TOML"),
        ("[install]\nenforce-container-sigpolicy = 'yes'\n", "enforce-container-sigpolicy must be a bool"),
    ],
)
def test_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_sizes() -> None:
    assert config.parse_size("5G", "x") == 5 * 1000**3
    assert config.parse_size("512 MiB", "x") == 512 * MiB
    assert config.parse_size(4096, "x") == 4096
    assert root_size(1000 * MiB, None) == 2512 * MiB
    with pytest.raises(Exception, match="smaller than the content"):
        root_size(1000 * MiB, 500 * MiB)
