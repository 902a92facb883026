"""Every lint rule on small synthetic trees: one passing and at least one failing case each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imagemode.build import lint

BOOTC = {"containers.bootc": "1"}


def good_tree(root: Path) -> Path:
    k = root / "usr/lib/modules/6.1.0-1-amd64"
    k.mkdir(parents=True)
    (k / "vmlinuz").write_bytes(b"kernel")
    (k / "initramfs.img").write_bytes(b"initrd")
    for d in ("run", "tmp", "var/lib", "etc", "boot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("../run")
    (root / "etc/fstab").write_text("# empty\n")
    return root


def findings(root: Path, labels: dict[str, str] | None = None) -> dict[str, list[str]]:
    r = lint.lint_tree(root, BOOTC if labels is None else labels)
    out: dict[str, list[str]] = {}
    for f in r.errors + r.warnings:
        out.setdefault(f.rule, []).append(f.message)
    return out


def test_good_tree_passes_every_rule(tmp_path: Path) -> None:
    r = lint.lint_tree(good_tree(tmp_path), BOOTC)
    assert r.errors == [] and r.warnings == []
    assert sorted(r.passed) == sorted(rule.name for rule in lint.RULES)


def test_no_kernel(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    for f in (root / "usr/lib/modules/6.1.0-1-amd64").iterdir():
        f.unlink()
    assert findings(root)["kernel"] == ["no kernel: /usr/lib/modules/$kver/vmlinuz not found"]


def test_two_kernels(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    k2 = root / "usr/lib/modules/6.2.0-1-amd64"
    k2.mkdir()
    (k2 / "vmlinuz").write_bytes(b"k")
    assert "2 kernels found (6.1.0-1-amd64, 6.2.0-1-amd64)" in findings(root)["kernel"][0]


def test_kernel_without_initramfs(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "usr/lib/modules/6.1.0-1-amd64/initramfs.img").unlink()
    assert findings(root)["kernel"] == [
        "kernel 6.1.0-1-amd64 has no initramfs.img in /usr/lib/modules/6.1.0-1-amd64"
    ]


def test_bootc_label(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    assert "bootc-label" in findings(root, {})
    assert "bootc-label" in findings(root, {"containers.bootc": "0"})


def test_run_and_tmp_must_be_empty(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "run/.containerenv").write_text("")  # left by podman builds: not the author's
    assert "run-tmp-empty" not in findings(root)
    (root / "tmp/leftover").write_text("x")
    (root / "run/app.pid").write_text("1")
    msgs = findings(root)["run-tmp-empty"]
    assert msgs == [
        "/run is not empty (app.pid); it is a tmpfs on a booted system",
        "/tmp is not empty (leftover); it is a tmpfs on a booted system",
    ]


def test_var_content_needs_tmpfiles(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "var/lib/app").mkdir()
    (root / "var/lib/app/state.db").write_text("x")
    (root / "var/log/app").mkdir(parents=True)
    (root / "var/log/app/old.log").write_text("ignored: logs")
    msgs = findings(root)["var-content"]
    assert msgs == [
        "1 files in /var have no tmpfiles.d entry and will not reach an updated device"
        " (/var/lib/app/state.db)"
    ]
    # A C line that copies the directory from /usr covers everything below it.
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    (root / "usr/lib/tmpfiles.d/app.conf").write_text("C /var/lib/app - - - - /usr/share/factory/app\n")
    assert "var-content" not in findings(root)


def test_fstab_root_is_a_warning(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "etc/fstab").write_text("UUID=abc / ext4 defaults 0 1\nLABEL=esp /efi vfat defaults 0 2\n")
    r = lint.lint_tree(root, BOOTC)
    assert r.errors == []
    assert [str(w) for w in r.warnings] == [
        "fstab-root: /etc/fstab mounts / (UUID=abc); the root is set up by the initramfs from ostree="
    ]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('kargs = "console=ttyS0"', "'kargs' must be a list"),
        ("kargs = [", "Invalid value"),
        ('kargs = ["a"]\nfoo = 1', "unknown key 'foo'"),
        ('kargs = ["a"]\nmatch-architectures = "x86_64"', "'match-architectures' must be a list"),
    ],
)
def test_kargs_toml(tmp_path: Path, content: str, fragment: str) -> None:
    root = good_tree(tmp_path)
    d = root / "usr/lib/bootc/kargs.d"
    d.mkdir(parents=True)
    (d / "10-good.toml").write_text('kargs = ["console=ttyS0"]\nmatch-architectures = ["x86_64"]\n')
    assert "kargs-toml" not in findings(root)
    (d / "20-bad.toml").write_text(content)
    (msg,) = findings(root)["kargs-toml"]
    assert msg.startswith("/usr/lib/bootc/kargs.d/20-bad.toml: ")
    assert fragment in msg


def test_utf8_names(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "etc/ok-é").write_text("")
    assert "utf8-names" not in findings(root)
    open(os.path.join(os.fsencode(root / "etc"), b"bad-\xff"), "w").close()
    assert findings(root)["utf8-names"] == ["1 file names are not valid UTF-8 (/etc/bad-\\xff)"]


def test_usr_etc_var_run_boot(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "usr/etc").mkdir()
    (root / "var/run").unlink()
    (root / "var/run").mkdir()
    (root / "boot/vmlinuz-1").write_text("")
    f = findings(root)
    assert f["usr-etc"] and f["var-run"] == ["/var/run is not a link to /run"]
    assert f["boot-empty"][0].startswith("/boot is not empty (vmlinuz-1)")


def test_signature_keys(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    install = root / "usr/lib/bootc/install"
    install.mkdir(parents=True)
    (install / "50-signed.toml").write_text("[install]\nenforce-container-sigpolicy = true\n")
    assert findings(root)["signature-keys"] == [
        "signature enforcement is on, and /etc/containers/policy.json is missing"
    ]
    (root / "etc/containers").mkdir()
    policy = root / "etc/containers/policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    assert findings(root)["signature-keys"] == [
        "signature enforcement is on, and /etc/containers/policy.json requires no signature"
    ]
    signed = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/containers/fleet.gpg"}
    policy.write_text(
        '{"default": [{"type": "reject"}], "transports": {"docker": {"registry.example.com/fleet": ['
        + json.dumps(signed)
        + "]}}}"
    )
    assert findings(root)["signature-keys"] == [
        "/etc/containers/policy.json names the key /etc/pki/containers/fleet.gpg, which is not in the image"
    ]
    (root / "etc/pki/containers").mkdir(parents=True)
    (root / "etc/pki/containers/fleet.gpg").write_bytes(b"key")
    assert "signature-keys" not in findings(root)
    (install / "60-off.toml").write_text("[install]\nenforce-container-sigpolicy = 1\n")
    assert "must be true or false" in findings(root)["signature-keys"][0]
