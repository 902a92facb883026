"""`usr-overlay`: a writable overlay on the booted /usr that is gone at the next boot.

The field tool for debugging a device: install a package, add a tracer, try a fix, and reboot to
forget it all. It is libostree's unlock (`ostree admin unlock`, as bootc does it), so status reads
it back from the deployment (usrOverlay) and no update or health verdict sees a difference: the
deployment on disk is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.host.status import USR_OVERLAY
from imagemode.host.sysroot import booted, load, require_booted
from imagemode.run import RunError, run


@dataclass(frozen=True)
class Overlay:
    access_mode: str  # readWrite or readOnly, as bootc's status says it
    persistence: str = "transient"

    def to_dict(self) -> dict[str, Any]:
        return {"usrOverlay": {"accessMode": self.access_mode, "persistence": self.persistence}}

    def human(self) -> str:
        how = "read-only (remount it read/write in a mount namespace of your own)" if (
            self.access_mode == "readOnly") else "writable"  # fmt: skip
        return f"a {how} overlay is mounted on /usr; it is discarded at the next boot"


def unlock(read_only: bool = False) -> Overlay:
    require_booted()
    state = USR_OVERLAY.get(int(booted(load()).get_unlocked()))
    if state is not None:
        raise ImagemodeError(
            f"/usr already has an overlay ({state['persistence']}, {state['accessMode']}); it goes at the"
            " next boot"
        )
    try:
        run(["ostree", "admin", "unlock", *(["--transient"] if read_only else [])])
    except RunError as e:
        raise ImagemodeError(f"cannot mount an overlay on /usr: {e}") from None
    return Overlay("readOnly" if read_only else "readWrite")
