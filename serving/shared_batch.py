"""Large batches handed to a replica on the same node through shared memory (/dev/shm), not through Ray.

Measured on an H100 box (loadtests/README.md, "GPU"), a Serve round trip of
the wide model took, by value, 3.4 ms for 1 row and 17.6 ms for 16,384 rows
(1.9 MiB) around 2 ms of GPU work; 58 ms for 65,536 rows (7.5 MiB) around
6.6 ms. Through the object store (by reference) it was 13.9 and 24 ms. Moving
the bytes is what costs, not the call: so the gateway writes a batch into one
shared-memory segment, sends the replica only its layout (a few hundred bytes,
by value), and the replica reads its inputs from the segment and writes its
outputs back into room the gateway left for them.

The gateway owns every segment: it creates it with all its pages allocated
(``posix_fallocate``, so a full /dev/shm fails the call cleanly instead of
killing the process with SIGBUS later), reuses it for later batches
(``SegmentPool``), and unlinks it when it stops or when a call on it fails or
is cancelled. A replica only maps it; its mapping outlives an unlink.
A replica on another node cannot see the segment and says so, and the gateway
then sends the batch through Ray. Segments left by a gateway that died are
removed by the next gateway on that node (``remove_orphans``).
"""

from __future__ import annotations

import math
import mmap
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np

from serving.batch_inputs import Arrays, Parts, batch_rows
from serving.buffers import aligned, array_at

SHM_DIR = Path("/dev/shm")
PREFIX = "mlgate-batch-"
_GRAIN = 1 << 20  # segments are sized in whole MiB, so that batches of similar size share them
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-(\d+)-\d+$")
_serial = count()


def _pid_namespace() -> int:
    """This process's PID namespace (0 where /proc does not tell). Segment names carry it, because a pid means
    something only inside its namespace: two containers can share a /dev/shm (the containers of one Kubernetes
    pod do) without sharing pids, and a live gateway there must not look dead here."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


PID_NAMESPACE = _pid_namespace()


def segment_prefix(pid: int) -> str:
    """How the names of the segments of gateway process ``pid`` (in this PID namespace) begin."""
    return f"{PREFIX}{PID_NAMESPACE}-{pid}-"


@dataclass(frozen=True)
class Slot:
    """One array's place in a segment."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """What the replica is sent instead of the batch: where to find its inputs and where to put its outputs."""

    segment: str
    inode: int
    """The segment file's inode: a name can come back (a new gateway process with a recycled pid), an inode cannot
    while the replica still maps the file that had it."""
    node_id: str
    size: int
    inputs: tuple[Slot, ...]
    outputs: tuple[Slot, ...]

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> Layout:
        """A layout from its JSON form (what ``orjson.dumps`` makes of it), as the direct channel carries it."""
        def slots(described: list[dict[str, Any]]) -> tuple[Slot, ...]:
            return tuple(Slot(str(s["name"]), str(s["dtype"]), tuple(int(d) for d in s["shape"]), int(s["offset"]))
                         for s in described)
        return cls(str(fields["segment"]), int(fields["inode"]), str(fields["node_id"]), int(fields["size"]),
                   slots(fields["inputs"]), slots(fields["outputs"]))


RowSpec = tuple[str, tuple[int, ...]]
"""An output's numpy dtype and the shape of one row of it (a model whose outputs have one row per input row)."""


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _place(arrays: list[tuple[str, str, tuple[int, ...]]], start: int) -> tuple[list[Slot], int]:
    slots, offset = [], start
    for name, dtype, shape in arrays:
        slot = Slot(name, dtype, shape, offset)
        slots.append(slot)
        offset = aligned(offset + slot.nbytes)
    return slots, offset


class NoSharedMemory(Exception):
    """/dev/shm could not give a segment (full, gone, not permitted): the batch goes through Ray instead."""


class Segment:
    """One shared-memory file the gateway created, mapped in the gateway; unlinked on ``close``."""

    def __init__(self, size: int) -> None:
        self.name = f"{segment_prefix(os.getpid())}{next(_serial)}"
        self.size = size
        self.path = SHM_DIR / self.name
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            self.inode = os.fstat(fd).st_ino
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def close(self) -> None:
        _close(self.map)
        self.path.unlink(missing_ok=True)


class SharedBatch:
    """A batch written into a segment: its layout (for the replica) and the outputs once the replica is done."""

    def __init__(self, segment: Segment, layout: Layout) -> None:
        self.segment, self.layout = segment, layout

    def read_outputs(self) -> Arrays:
        """Copies of the outputs the replica wrote (the segment is reused by the next batch)."""
        return {slot.name: _view(self.segment.map, slot).copy() for slot in self.layout.outputs}


class SegmentPool:
    """The gateway's segments for one deployment, reused from call to call.

    Reuse is what makes shared memory pay: a fresh segment costs page allocation
    and a page fault per 4 KiB in both processes, which on a 2-core box made a
    7.5 MiB round trip slower than the object store. A segment goes back to the
    pool only after its call returned normally; one whose call failed or was
    cancelled may still be written by a replica that is running late, so it is
    unlinked instead and never reused.
    """

    def __init__(self, node_id: str, output_rows: dict[str, RowSpec]) -> None:
        self._node_id = node_id
        self._output_rows = output_rows
        self._free: list[Segment] = []
        self._leased: set[Segment] = set()
        self._closed = False

    @contextmanager
    def batch(self, parts: Parts) -> Iterator[SharedBatch]:
        """A segment holding the batch's inputs, each request's rows copied straight to their place (the one copy
        of them the gateway makes), and room for the outputs; NoSharedMemory if /dev/shm cannot give one."""
        rows = batch_rows(parts)
        input_slots, end = _place([(n, a.dtype.str, (rows, *a.shape[1:])) for n, a in parts[0].items()], 0)
        output_slots, size = _place([(n, dtype, (rows, *row)) for n, (dtype, row) in self._output_rows.items()], end)
        segment = self._take(max(size, 1))
        returned = False
        try:
            for slot in input_slots:
                np.concatenate([part[slot.name] for part in parts], out=_view(segment.map, slot))
            yield SharedBatch(segment, Layout(segment.name, segment.inode, self._node_id, segment.size,
                                              tuple(input_slots), tuple(output_slots)))
            returned = True
        finally:
            self._leased.discard(segment)
            if returned and not self._closed:  # a pool closed meanwhile unlinked it: it must not come back
                self._free.append(segment)
            else:
                segment.close()

    def _take(self, size: int) -> Segment:
        fits = [s for s in self._free if s.size >= size]
        if fits:
            segment = min(fits, key=lambda s: s.size)
            self._free.remove(segment)
        else:
            try:
                segment = Segment(-(-size // _GRAIN) * _GRAIN)
            except OSError as exc:
                raise NoSharedMemory(str(exc)) from exc
        self._leased.add(segment)
        return segment

    def close(self) -> None:
        """Unlink every segment (a replica's mapping of one outlives this)."""
        self._closed = True
        for segment in [*self._free, *self._leased]:
            segment.close()
        self._free.clear()
        self._leased.clear()


def _view(buffer: mmap.mmap, slot: Slot) -> np.ndarray:
    return array_at(buffer, slot.dtype, slot.shape, slot.offset)


class Mappings:
    """The replica's side: the segments it has mapped, kept mapped between calls (mapping and faulting the
    pages in is what costs), the ``keep`` most recently used of them: enough for 64 gateway processes (the most
    ``server.workers`` allows) with two batches in flight each (the default ``max_inflight_batches``).

    Thread-safe: layouts arrive on the replica's event loop (through Ray) and on the direct channel's
    threads at once."""

    def __init__(self, keep: int = 128) -> None:
        self._keep = keep
        self._maps: dict[str, tuple[int, mmap.mmap]] = {}
        """By segment name: the inode of the file mapped under it, and the mapping."""
        self._lock = threading.Lock()

    def views(self, layout: Layout) -> tuple[Arrays, Arrays]:
        """(inputs, room for outputs) as arrays over the segment; FileNotFoundError if it is not on this node (or
        its name now belongs to another file), ValueError if ``layout`` does not name a gateway's segment (nothing
        outside /dev/shm's is opened)."""
        if _NAME.match(layout.segment) is None:
            raise ValueError(f"{layout.segment!r} is not the name of a gateway's shared-memory segment")
        with self._lock:
            inode, buffer = self._maps.pop(layout.segment, (0, None))
            if buffer is not None and inode != layout.inode:  # the name's old file: unlinked, its name reused
                _close(buffer)
                buffer = None
            if buffer is None:
                buffer = self._map(layout)
                while len(self._maps) >= self._keep:
                    _close(self._maps.pop(next(iter(self._maps)))[1])
            self._maps[layout.segment] = (layout.inode, buffer)  # (re)inserted last: the most recently used
            # views made under the lock: another thread's eviction cannot close the mapping before they hold it
            return ({slot.name: _view(buffer, slot) for slot in layout.inputs},
                    {slot.name: _view(buffer, slot) for slot in layout.outputs})


    @staticmethod
    def _map(layout: Layout) -> mmap.mmap:
        fd = os.open(SHM_DIR / layout.segment, os.O_RDWR)
        try:
            if os.fstat(fd).st_ino != layout.inode:
                raise FileNotFoundError(f"{layout.segment} is no longer the segment the gateway wrote")
            return mmap.mmap(fd, layout.size)
        finally:
            os.close(fd)


def _close(buffer: mmap.mmap) -> None:
    with suppress(BufferError):  # a view still alive keeps the mapping; it is freed with the view
        buffer.close()


def write_outputs(results: Arrays, room: Arrays) -> bool:
    """Copy ``results`` into the segment's output views; False (nothing written) if they do not fit exactly."""
    if results.keys() != room.keys() or any(
            results[n].shape != room[n].shape or results[n].dtype != room[n].dtype for n in room):
        return False
    for name, view in room.items():
        view[...] = results[name]
    return True


def remove_orphans() -> int:
    """Remove segments whose gateway process no longer exists (it died mid-call); returns how many. Only
    segments made in this PID namespace are judged: another namespace's pids cannot be checked from here."""
    removed = 0
    if not available():
        return 0
    for path in SHM_DIR.glob(PREFIX + "*"):
        match = _NAME.match(path.name)
        if match is None or int(match.group(1)) != PID_NAMESPACE or _alive(int(match.group(2))):
            continue
        with suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
