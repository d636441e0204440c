"""Updates held while PostgreSQL is down, made durable on local disk until it is back.

The write-ahead keeps retrying its batch while the database is away; without this, a process killed
meanwhile would lose every edit since the outage began (7 s in `make chaos`). Each process appends what
it holds to its own file (`<data dir>/spill/<process>.spill`, one fsync per commit window) and holds an
exclusive lock on it for its lifetime; once the batch is committed the file is emptied. A process that
starts replays every file nobody holds (a process that died) into `document_updates` and deletes it.
A record already committed before the crash is replayed twice: Yjs updates are idempotent.

Record: length (4 bytes) · CRC-32 of the body (4 bytes) · body = document id (16) · user id (16, zeros
for none) · device id and client version (2-byte length + UTF-8 each) · the update. A torn last record
(a crash mid-write) fails its length or CRC and ends the replay of that file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO
from uuid import UUID

from collab_server.core.storage import PendingUpdate

log = logging.getLogger("collab.spill")

_HEAD = struct.Struct(">II")
_NO_USER = bytes(16)


def encode(update: PendingUpdate) -> bytes:
    device = (update.device_id or "").encode()[:65535]
    version = (update.client_version or "").encode()[:65535]
    body = b"".join((
        update.document_id.bytes, update.user_id.bytes if update.user_id else _NO_USER,
        struct.pack(">H", len(device)), device, struct.pack(">H", len(version)), version, update.payload,
    ))
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def decode(data: bytes) -> Iterator[PendingUpdate]:
    """Every whole record in `data`, in order; stops at the first torn or corrupt one."""
    at = 0
    while at + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, at)
        body = data[at + _HEAD.size: at + _HEAD.size + length]
        if len(body) != length or zlib.crc32(body) != crc or length < 36:
            return
        at += _HEAD.size + length
        user = body[16:32]
        n = struct.unpack_from(">H", body, 32)[0]
        device = body[34:34 + n].decode(errors="replace")
        m = struct.unpack_from(">H", body, 34 + n)[0]
        version = body[36 + n:36 + n + m].decode(errors="replace")
        yield PendingUpdate(
            UUID(bytes=body[:16]), body[36 + n + m:], UUID(bytes=user) if user != _NO_USER else None,
            device or None, version or None,
        )


class Spill:
    """This process's spill file: opened (and locked) at start, emptied after each commit it covered."""

    def __init__(self, directory: Path, process_id: str) -> None:
        self.directory = directory
        self.path = directory / f"{process_id}.spill"
        self._file: BinaryIO | None = None
        self.held = 0  # records in the file now

    def open(self) -> None:
        """Created under a name no replay looks at, locked, then renamed into place: a process starting
        meanwhile can never take a live process's new file for an orphan."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fresh = self.path.with_suffix(".new")
        self._file = open(fresh, "ab")  # held, and locked, for the process's lifetime
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(fresh, self.path)

    def append(self, updates: Sequence[PendingUpdate]) -> None:
        """Durable on return (blocking: call it in a thread; write and fsync release the GIL). A failed
        write (a full disk) is cut back off, so no torn record hides the ones after it."""
        assert self._file is not None
        start = self._file.tell()
        try:
            self._file.write(b"".join(encode(u) for u in updates))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                self._file.truncate(start)
                self._file.seek(start)
            raise
        self.held += len(updates)

    def clear(self) -> None:
        """Everything held is committed to PostgreSQL: start the file over."""
        if self._file is None or not self.held:
            return
        self._file.truncate(0)
        self._file.seek(0)
        os.fsync(self._file.fileno())
        self.held = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self.held == 0:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()


def orphans(directory: Path) -> Iterator[tuple[Path, list[PendingUpdate]]]:
    """Spill files no live process holds, with their records. Each stays locked until the caller asks for
    the next one, so it replays and deletes it while no other starting process can."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.spill")):
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            continue  # replayed by another process meanwhile
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process's own file
            if not path.exists():
                continue  # replayed and deleted just before we locked it
            records = list(decode(f.read()))
            if records:
                log.info("replaying %d updates a dead process held while PostgreSQL was down (%s)",
                         len(records), path)
            yield path, records
