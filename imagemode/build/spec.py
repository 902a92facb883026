"""What a base image is made of: one frozen spec, whose hash is the cache key of the OS layer."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_TAG = "localhost/imagemode/debian:12"
DEFAULT_CACHE = Path(os.environ.get("IMAGEMODE_CACHE", "/var/cache/imagemode"))
DEFAULT_RELEASE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# Bumped when what the steps write changes for a reason their code and data files do not show (a
# tool's behaviour, say); edits to build/steps.py and data/base reach the cache key by recipe_digest().
RECIPE_VERSION = 4

# What a bootable, updatable edge node needs. Everything else comes from apt's resolution of these.
PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "dracut",
    "ostree",
    "ostree-boot",
    "e2fsprogs",
    "dosfstools",
    "iproute2",
    "ca-certificates",
    "openssh-server",
    "systemd-timesyncd",
    "python3",
    "python3-gi",
    "gir1.2-ostree-1.0",
    "python3-yaml",
    "skopeo",
    "podman",
    "jq",  # greenboot's checks and fleet agents' scripts read `bootc status --json` with it
    "zstd",  # dracut compresses the initramfs with it (imagemode/data/base/dracut-imagemode.conf)
)

# Kernel module trees left out: hardware an edge node does not drive without firmware this image does
# not ship (GPUs, wireless, media), or that a headless node has no use for. Storage, network, USB, HID,
# netfilter, overlayfs and virtualisation stay. See docs/base-image.md.
PRUNED_MODULE_DIRS = (
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/iio",
    "kernel/drivers/comedi",
    "kernel/drivers/isdn",
    "kernel/drivers/bluetooth",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet/mellanox",
    "kernel/drivers/video",
    "kernel/sound",
    "kernel/net/bluetooth",
    "kernel/net/wireless",
    "kernel/net/mac80211",
)

# The initramfs carries only what it takes to find and mount an ostree root on common disks.
INITRAMFS_DRIVERS = (
    "virtio_blk virtio_pci virtio_scsi sd_mod ahci nvme mmc_block sdhci_pci sdhci_acpi usb_storage uas "
    "xhci_pci ehci_pci ext4 vfat nls_cp437 nls_iso8859_1 dm_mod"
)
INITRAMFS_OMIT = (
    "plymouth network network-legacy network-manager nfs iscsi nbd multipath lvm mdraid crypt btrfs "
    "i18n resume"
)

# Paths left out of every package (dpkg path-exclude), as mmdebstrap's documentation shows.
DPKG_EXCLUDES = (
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/doc/*",
    "/usr/share/info/*",
    "/usr/share/lintian/*",
    "/usr/share/linda/*",
)
DPKG_INCLUDES = ("/usr/share/locale/locale.alias", "/usr/share/doc/*/copyright")


@dataclass(frozen=True)
class BaseSpec:
    release: str = DEFAULT_RELEASE
    mirror: str = DEFAULT_MIRROR
    security_mirror: str = DEFAULT_SECURITY_MIRROR
    architecture: str = "amd64"
    packages: tuple[str, ...] = PACKAGES
    extra_packages: tuple[str, ...] = ()
    pruned_module_dirs: tuple[str, ...] = PRUNED_MODULE_DIRS
    recipe_version: int = RECIPE_VERSION

    @property
    def all_packages(self) -> tuple[str, ...]:
        return self.packages + tuple(p for p in self.extra_packages if p not in self.packages)

    @property
    def sources(self) -> tuple[str, ...]:
        """One-line apt sources, in the form mmdebstrap and sources.list both take."""
        s = [
            f"deb {self.mirror} {self.release} main",
            f"deb {self.mirror} {self.release}-updates main",
        ]
        if self.security_mirror:
            s.append(f"deb {self.security_mirror} {self.release}-security main")
        return tuple(s)


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    architecture: str
    installed_size_kib: int = 0


@dataclass(frozen=True)
class Lock:
    """The resolved package set: with the spec, it fixes every byte of the OS layer."""

    release: str
    architecture: str
    source_date_epoch: int
    packages: tuple[LockedPackage, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Lock:
        d = json.loads(text)
        return cls(
            release=d["release"],
            architecture=d["architecture"],
            source_date_epoch=int(d["source_date_epoch"]),
            packages=tuple(LockedPackage(**p) for p in d["packages"]),
        )

    @property
    def total_installed_kib(self) -> int:
        return sum(p.installed_size_kib for p in self.packages)

    def pins(self) -> list[str]:
        return [f"{p.name}={p.version}" for p in self.packages]


def recipe_digest() -> str:
    """The sha256 of how the OS layer is made: the build steps' code and the files they install.
    Without it in the key, an edit to a unit or a config file under data/base kept a stale layer."""
    from importlib import resources

    h = hashlib.sha256()
    pkg = resources.files("imagemode")
    files = [pkg / "build/steps.py", *sorted(pkg.joinpath("data/base").iterdir(), key=lambda p: p.name)]
    for f in files:
        if f.is_file() and not f.name.endswith(".pyc"):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def cache_key(spec: BaseSpec, lock: Lock) -> str:
    """The sha256 of everything that decides the OS layer's bytes: the same key means skip the build."""
    payload = json.dumps(
        {"spec": asdict(spec), "lock": asdict(lock), "recipe": recipe_digest()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()
