"""A seeded mutator over tar headers, manifests and configs: every case either imports or fails with
one ImagemodeError line; none ends in a traceback, and nothing is written outside the store.

The seed is printed on failure (IMAGEMODE_FUZZ_SEED=N reruns one), and the case count is fixed, so a
run is repeatable. The cases go through the real code: `layers.commit_layer` on a real ostree repo for
tars, `oci.manifest` and `importer.read_layout` for JSON.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from imagemode.errors import ImagemodeError
from imagemode.oci import manifest as oci_manifest
from imagemode.store import importer, layers
from imagemode.store.ostree import Repo
from tests import hostile
from tests.hostile import Image, Layer

TAR_CASES = 1000
JSON_CASES = 1200
SEED = int(os.environ.get("IMAGEMODE_FUZZ_SEED", "20261201"))


def seed_tar() -> bytes:
    return hostile.tar_bytes(
        [
            ("dir", "usr"),
            ("dir", "usr/bin"),
            ("file", "usr/bin/tool", b"#!/bin/sh\necho tool\n" * 20, 0o4755),
            ("sym", "usr/bin/sh", "tool"),
            ("link", "usr/bin/tool2", "usr/bin/tool"),
            ("file", "usr/.wh.gone", b""),
            ("dir", "var/lib/app"),
            ("raw", _with_xattr(), b"data"),
        ]
    )


def _with_xattr() -> tarfile.TarInfo:
    ti = tarfile.TarInfo("usr/bin/cap")
    ti.size = 4
    ti.pax_headers = {"SCHILY.xattr.user.k": "v"}
    return ti


def _fix_checksums(data: bytearray) -> None:
    for off in range(0, len(data) - 511, 512):
        block = data[off : off + 512]
        if block[257:262] == b"ustar":
            block[148:156] = b" " * 8
            block[148:156] = b"%06o\0 " % sum(block)
            data[off : off + 512] = block


def mutate_tar(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(rng.randint(1, 8)):
        if len(data) < 1024:
            break
        what = rng.random()
        if what < 0.6:
            i = rng.randrange(min(len(data), 4096))
            data[i] = rng.randrange(256)
        elif what < 0.8:
            # a header field with a value from the edges: sizes, modes, owners, type flags
            off = rng.randrange(0, min(len(data), 4096) // 512) * 512
            field, width = rng.choice([(100, 8), (108, 8), (116, 8), (124, 12), (156, 1), (157, 100)])
            value = rng.choice(
                [b"7" * width, b"\xff" * width, b"-1", b"../../x", b"\0", b"S", b"1", b"2", b"L"]
            )
            data[off + field : off + field + min(width, len(value))] = value[:width]
        else:
            data = data[: rng.randrange(len(data))]
    if rng.random() < 0.8:
        _fix_checksums(data)
    return bytes(data)


def test_tar_headers(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sentinel = hostile.make_sentinel(tmp_path / "sentinel")
    before = hostile.tree_hash(sentinel)
    repo = Repo(tmp_path / "repo").ensure()
    # Thousands of transactions: fsync is what ostree would spend the minute on, and proves nothing here.
    subprocess.run(["ostree", f"--repo={repo.path}", "config", "set", "core.fsync", "false"], check=True)
    base = seed_tar()
    blob = tmp_path / "blob"
    t0 = time.monotonic()
    outcomes = {"imported": 0, "refused": 0}
    for n in range(TAR_CASES):
        tar = mutate_tar(rng, base)
        gz = rng.random() < 0.3
        data = gzip.compress(tar, mtime=0) if gz else tar
        blob.write_bytes(data)
        try:
            layers.commit_layer(repo, blob, f"fuzz/{n}", digest=hostile.sha(data), diff_id=hostile.sha(tar))
            outcomes["imported"] += 1
        except ImagemodeError as e:
            assert str(e) and "\n" not in str(e), f"seed {SEED} case {n}: not one line: {e!r}"
            outcomes["refused"] += 1
        except Exception as e:  # pragma: no cover - the failure this test exists to find
            pytest.fail(f"seed {SEED} case {n}: {type(e).__name__}: {e}")
    assert hostile.tree_hash(sentinel) == before
    assert sorted(os.listdir(tmp_path)) == ["blob", "repo", "sentinel"]
    assert outcomes["imported"] > 50 and outcomes["refused"] > 50, outcomes  # the mutator reaches both sides
    print(f"tar cases: {TAR_CASES} in {time.monotonic() - t0:.1f}s, {outcomes}")


# --- JSON --------------------------------------------------------------------------------------------

EDGE_VALUES: list[Any] = [
    -1,
    0,
    2**63,
    2**64,
    1.5,
    True,
    None,
    "",
    "x",
    "sha256:../../x",
    "sha256:" + "a" * 63,
    "sha256:" + "A" * 64,
    [],
    {},
    [1],
    {"a": 1},
    "\0",
    "a" * 5000,
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def mutate_json(rng: random.Random, doc: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return copy.deepcopy(rng.choice(EDGE_VALUES))
        path = rng.choice(paths)
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(EDGE_VALUES))
    return doc


def test_manifests_and_configs(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    layer = Layer.of(hostile.tar_bytes([("file", "a", b"a")]))
    good = Image([layer])
    good.write(tmp_path / "good")
    index = json.loads((tmp_path / "good/index.json").read_text())
    mdigest = index["manifests"][0]["digest"]
    good_manifest = json.loads((tmp_path / "good/blobs/sha256" / mdigest[7:]).read_text())
    good_config = hostile.config([layer.diff_id])
    t0 = time.monotonic()
    refused = 0
    for n in range(JSON_CASES):
        which = n % 3
        try:
            if which == 0:
                oci_manifest.manifest(json.dumps(mutate_json(rng, good_manifest)))
            elif which == 1:
                oci_manifest.config(json.dumps(mutate_json(rng, good_config)), 1)
            else:
                oci_manifest.index(json.dumps(mutate_json(rng, index)))
            if n % 10 == 0:
                # the whole boundary of a layout, with a broken manifest written into it
                broken = mutate_json(rng, good_manifest)
                img = Image([layer], break_manifest=lambda _m, b=broken: b)
                img.write(tmp_path / f"l{n}")
                importer.read_layout(tmp_path / f"l{n}")
        except ImagemodeError as e:
            assert str(e) and "\n" not in str(e), f"seed {SEED + 1} case {n}: {e!r}"
            refused += 1
        except Exception as e:  # pragma: no cover
            pytest.fail(f"seed {SEED + 1} case {n}: {type(e).__name__}: {e}")
    assert refused > JSON_CASES // 4
    print(f"json cases: {JSON_CASES} in {time.monotonic() - t0:.1f}s, {refused} refused")
