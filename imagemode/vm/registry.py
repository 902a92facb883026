"""A throwaway registry on 127.0.0.1 for tests, the demo and benchmarks: Debian's docker-registry
(CNCF distribution 2.8) with a temporary config, optionally behind htpasswd authentication."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from imagemode.errors import ImagemodeError
from imagemode.oci import storage
from imagemode.oci.manifest import digest_of
from imagemode.oci.policy import Trust
from imagemode.oci.reference import ImageRef, parse
from imagemode.run import ToolMissingError, spawn, which
from imagemode.vm.qemu import free_port


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():  # crypt is deprecated in 3.11, and the only bcrypt in the stdlib
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@dataclass
class Registry:
    user: str | None = None
    password: str | None = None
    port: int = 0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="imagemode-registry-")))
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        if which("docker-registry") is None:
            raise ToolMissingError("docker-registry")
        self.port = self.port or free_port()
        config = (
            "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.address}'}}\n"
        )
        if self.user:
            (self.root / "htpasswd").write_text(f"{self.user}:{_bcrypt(self.password or '')}\n")
            config += f"auth: {{htpasswd: {{realm: imagemode, path: {self.root / 'htpasswd'}}}}}\n"
        (self.root / "config.yml").write_text(config)
        log = open(self.root / "registry.log", "wb")  # noqa: SIM115
        self.proc = spawn(["docker-registry", "serve", self.root / "config.yml"], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2)
                return self
            except urllib.error.HTTPError:  # 401 from an authenticating registry: it is up
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise ImagemodeError(
            f"docker-registry did not start on {self.address}: see {self.root}/registry.log"
        )

    def push(
        self,
        source: ImageRef | str,
        name: str,
        sign_by: str | None = None,
        trust: Trust | None = None,
        sign_identity: str | None = None,
    ) -> ImageRef:
        """Copy `source` to NAME[:TAG] in this registry; returns the reference as this host sees it.

        Layers are gzip-compressed, as a registry serves them, at level 1: a test registry on the
        loopback gains nothing from smaller blobs, and the base layer's 633 MB compress in 8 s instead
        of 11. `sign_by`: a GPG fingerprint, whose signature goes where `trust.registries_d` says (a
        lookaside), naming `sign_identity` (default: this host's reference; a guest reaching the
        registry at another address needs its own)."""
        dest = parse(f"{self.address}/{name}")
        creds = (self.user, self.password or "") if self.user else None
        storage.copy(
            source, dest, dest_tls_verify=False, dest_creds=creds, sign_by=sign_by, trust=trust,
            sign_identity=sign_identity, compress_level=1,
        )  # fmt: skip
        return dest

    def digest(self, name: str) -> str:
        """The manifest digest this registry serves for NAME[:TAG]: what a device that pulls it records
        (a push compresses the layers, so it differs from the local image's)."""
        raw = storage.inspect_raw(parse(f"{self.address}/{name}"), tls_verify=False)
        return digest_of(raw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def insecure_conf(*addresses: str) -> str:
    """registries.conf lines that let a client use these plain-HTTP registries."""
    return "".join(f'[[registry]]\nlocation = "{a}"\ninsecure = true\n\n' for a in addresses)
