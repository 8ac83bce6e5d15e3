"""A step's files into and out of a container through the Docker API, for an engine on another machine.

A remote engine cannot bind-mount this machine's paths. So, for such an engine (see
`prefect_ml.infrastructure.docker_client.choose_transfer`), the step's container is created, the
same paths the mounts would give it (code dir, inputs, output staging dirs, the MLflow relay store,
the CA bundle) are copied in with one `put_archive` before it starts, and after it has exited the
read-write ones (outputs, relay) are copied back with `get_archive`. The step contract (what the
container sees, and where) stays exactly as with mounts; only the cost differs (the bytes travel).

Read-only places are copied without write bits (the container user cannot change them, as with a
read-only mount; root in the container could, but only its own copy). Read-write places belong to
the container user. What comes back is untrusted: it is unpacked with tarfile's `data` filter (no
absolute names, nothing outside the destination, no device files, no setuid bits, no ownership from
the archive), except that a symlink is kept as written, like a link in a bind-mounted dir (the
publisher refuses links out of a step's outputs later).
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class Place:
    """One host file or dir and where the container sees it (what a bind mount would be)."""

    host: Path
    target: str  # absolute path in the container
    writable: bool = False  # outputs, the relay: owned by the container user, copied back afterwards


def pack(places: Iterable[Place], *, uid: int | None, gid: int | None,
         dirs: Iterable[str] = ()) -> tuple[IO[bytes], int, int]:
    """A tar (in a temporary file, rewound) of `places` at their targets, to put at `/` in a container;
    with the number of files and bytes in it.

    `dirs`: container dirs to create first (root-owned, 0755): the parents of the targets.
    `uid`/`gid`: the container user's, for the writable places (None: a user name, so those are
    made world-writable instead).
    """
    out = tempfile.TemporaryFile(prefix="prefect-ml-copy-in-")  # noqa: SIM115 - the caller closes it
    count = size = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d.strip("/"))
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, 0, 0
            tar.addfile(info)
        for place in places:
            writable = place.writable

            def adjust(info: tarfile.TarInfo, writable: bool = writable) -> tarfile.TarInfo | None:
                nonlocal count, size
                if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
                    return None  # fifos, devices, sockets: not data
                info.uname = info.gname = ""  # numeric ids only: the engine's host has its own names
                if writable:
                    if uid is None:
                        info.mode |= 0o777 if info.isdir() else 0o666
                    else:
                        info.uid, info.gid = uid, (gid if gid is not None else uid)
                else:
                    info.mode &= ~0o222  # read-only, as a read-only mount
                if info.isreg():
                    count += 1
                    size += info.size
                return info

            tar.add(str(place.host), arcname=place.target.strip("/"), recursive=True, filter=adjust)
    out.seek(0)
    return out, count, size


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (docker-py's `get_archive` stream)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _strip(name: str, top: str) -> str:
    """`top/a/b` -> `a/b`; `top` itself -> ''."""
    parts = name.removeprefix("./").split("/", 1)
    return parts[1] if len(parts) == 2 and parts[0] == top else ""


def unpack(chunks: Iterable[bytes], top: str, dest: Path) -> tuple[int, int]:
    """Unpack a `get_archive` stream of the container dir named `top` into `dest` (its contents, not
    the dir itself); (files, bytes). Ownership becomes this process' user; see the module doc."""
    dest.mkdir(parents=True, exist_ok=True)
    count = size = 0

    def only_data(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        member = member.replace(uid=None, gid=None, uname=None, gname=None)  # type: ignore[arg-type]
        if member.issym():
            return tarfile.tar_filter(member, path)  # as written (relative or not), inside `dest`
        return tarfile.data_filter(member, path)

    with tarfile.open(fileobj=io.BufferedReader(_Chunks(iter(chunks)), 1 << 20), mode="r|") as tar:
        for member in tar:
            name = _strip(member.name, top)
            if not name:
                continue
            changes: dict = {"name": name}
            if member.islnk():
                changes["linkname"] = _strip(member.linkname, top)
                if not changes["linkname"]:
                    continue
            member = member.replace(**changes)
            tar.extract(member, dest, filter=only_data)
            if member.isreg():
                count += 1
                size += member.size
    return count, size

