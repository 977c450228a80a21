"""A direct channel from a gateway to the replicas on its own node: one Unix socket per replica.

Why it exists: a Ray Serve call is the most expensive thing on the data path. Measured on the
2-core box (champion, closed loop at 16 callers, 2,400 answers/s, 5.4 rows per batch), the replica
process spent 1.1 ms of CPU per batch (0.49 of a core) to run a model that takes ~20 µs, and the
gateway about as much again in Serve's router and Ray's client (docs/architecture.md: ~1.1 ms per
call). Both compete with the gateway's event loop for the same cores. So when every replica of a
deployment runs on the gateway's node, a batch goes over a Unix socket straight to a thread in the
replica: a fixed 12-byte prefix, a small JSON header naming the arrays, their raw bytes. Ray Serve
still places, starts, health-checks and restarts the replicas, and carries every batch of a
deployment with a replica elsewhere (its router balances across nodes; this channel cannot).

Large batches do not stream through the socket (from about 200 KiB, pushing the bytes through the
gateway's event loop costs more than copying them into shared memory): they are written into a
segment (``serving.shared_batch``) and only its layout, a few hundred bytes, crosses the channel
(``call_shared``); the replica reads its inputs there and writes its outputs back.

Rendezvous: each replica listens on ``<directory>/<pid>.sock``, the directory being private to the
user and derived from the Ray cluster's GCS address and the application's name (two clusters on one
machine, as in the tests, never share it). A replica binds under a temporary name and renames the
socket once it listens, so a socket found under its final name that refuses connections is stale
(its replica was killed) and is removed by the gateway that finds it; the gateway probes every socket
it finds before counting it.

Failure: a connection that breaks (the replica died or was replaced) raises ``ChannelDown`` and its
socket is forgotten; the backend then sends the batch through Ray, where Serve knows which replicas
are alive. An exception raised by the model comes back as ``ReplicaError`` with its message, as a
failed Ray call would.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import socket
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serving.batch_inputs import Arrays, Parts
from serving.buffers import aligned, array_at
from serving.shared_batch import Layout

log = logging.getLogger(__name__)

_PREFIX = struct.Struct("<IQ")
"""A frame: header length, payload length, then the JSON header and the payload."""
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 34
RESCAN_S = 1.0
"""How often a gateway looks for replicas that appeared (a restarted replica listens on a new socket)."""


class ChannelDown(Exception):
    """The replica's socket refused or broke the call: send the batch through Ray instead."""


class ReplicaError(RuntimeError):
    """The replica ran the batch and the model (or an injected fault) failed; the message is the replica's."""


def channel_directory(gcs_address: str, app: str) -> Path:
    """Where one application's replicas on this node listen; short enough for a socket path (108 bytes)."""
    digest = hashlib.sha256(f"{gcs_address}/{app}".encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"mlgate-{os.getuid()}" / digest


def _private_directory(directory: Path) -> bool:
    """Create ``directory`` (and its parent) for this user only; False if someone else owns either."""
    for path in (directory.parent, directory):
        path.mkdir(mode=0o700, exist_ok=True)
        status = path.stat()
        if status.st_uid != os.getuid() or status.st_mode & 0o077:
            log.warning("%s is not private to this user: no direct channel", path)
            return False
    return True


# ----------------------------------------------------------------------------------------------- frames


JOIN_PARTS_BELOW = 32 << 10
"""An input whose parts average fewer bytes than this goes into the frame joined, one buffer: a buffer per part costs
about 1 µs, as much as copying 30 KiB. On the 2-core box, encoding 16 parts of 30 KiB took 20.7 µs either way;
128 single rows of the champion took 142 µs as parts and 27 µs joined; 4 parts of 480 KiB, 7 µs and 154 µs."""


def encode(parts: Parts = (), warm_up: bool = False, **fields: Any) -> list[bytes | memoryview]:
    """A frame carrying ``fields`` (and ``warm_up`` only when set, so traffic's headers do not grow) and one array
    per input of ``parts``: the parts' rows back to back in the payload, 64-byte aligned per input, each part's
    buffer sent as it is unless the parts are small (``JOIN_PARTS_BELOW``): a large batch is never joined first.

    Numeric and boolean arrays only: a version with string tensors never opens the channel. ValueError if the
    parts disagree on an input's trailing shape, or, sent part by part, on its dtype (joined, np.concatenate would
    widen it; the gateway binds every request to the manifest's dtypes, so neither happens in service)."""
    described: list[list[Any]] = []
    buffers: list[bytes | memoryview] = []
    offset = 0
    for name, first in (parts[0] if parts else {}).items():
        arrays = [part[name] for part in parts]
        if len(arrays) > 1 and sum(array.nbytes for array in arrays) < JOIN_PARTS_BELOW * len(arrays):
            first = np.concatenate(arrays)
            arrays = [first]
        shape = list(first.shape)
        if len(arrays) > 1:
            shape[0] = _agreeing_rows(name, first, arrays)
        pad = aligned(offset) - offset
        if pad:
            buffers.append(bytes(pad))
            offset += pad
        described.append([name, first.dtype.str, shape, offset])
        for array in arrays:
            if not array.flags.c_contiguous:  # (np.ascontiguousarray would also turn a 0-d array into 1-d)
                array = array.copy(order="C")
            if array.nbytes:
                buffers.append(array.reshape(-1).view(np.uint8).data)
                offset += array.nbytes
    if warm_up:
        fields["warm_up"] = True
    header = orjson.dumps({**fields, "arrays": described})
    return [_PREFIX.pack(len(header), offset), header, *buffers]


def _agreeing_rows(name: str, first: np.ndarray, arrays: list[np.ndarray]) -> int:
    """The rows of ``arrays`` together; ValueError if their dtypes or trailing shapes differ, which would make their
    bytes back to back one meaningless array."""
    for array in arrays:
        if array.dtype != first.dtype or array.shape[1:] != first.shape[1:] or array.ndim == 0:
            raise ValueError(f"input '{name}': parts of dtype {array.dtype} and shape {list(array.shape)} cannot join "
                             f"parts of dtype {first.dtype} and shape {list(first.shape)}")
    return sum(len(array) for array in arrays)


def decode_arrays(header: dict[str, Any], payload: bytes | bytearray) -> Arrays:
    """The arrays a frame's header describes, as views over its payload (no copy)."""
    arrays = {}
    for name, dtype, shape, offset in header["arrays"]:
        arrays[name] = array_at(payload, dtype, shape, offset)
    return arrays


def _check_lengths(header_bytes: int, payload_bytes: int) -> None:
    if header_bytes > MAX_HEADER_BYTES or payload_bytes > MAX_PAYLOAD_BYTES:
        raise ValueError(f"frame of {header_bytes} header and {payload_bytes} payload bytes is beyond the limits")


# ----------------------------------------------------------------------------------------- replica side


Runner = Callable[[Arrays, bool], Arrays]
"""Runs one batch: (inputs, warm_up) -> outputs. Called from the channel's threads."""
SharedRunner = Callable[[Layout, bool], Arrays | None]
"""Runs one batch laid out in shared memory: (layout, warm_up) -> its outputs, {} if they were written into the
segment, None if this replica cannot see the segment. Called from the channel's threads."""
WRITTEN, ABSENT = "written", "absent"
"""What a reply's ``segment`` field says of a batch sent as a layout: outputs in the segment; segment not seen."""


class ReplicaListener:
    """The replica's end: a listening socket, and one thread per gateway connection running batches.

    Threads, not the replica's event loop: a connection carries one batch at a time, ONNX Runtime
    releases the GIL while it computes, and concurrent batches from several connections run side by
    side, as concurrent Serve calls do."""

    def __init__(self, directory: Path, run: Runner, run_shared: SharedRunner | None = None) -> None:
        self.path = directory / f"{os.getpid()}.sock"
        self._run = run
        self._run_shared = run_shared
        self._socket: socket.socket | None = None

    def start(self) -> bool:
        """Listen; False (and a warning) if this node gives no private place to do so."""
        binding = self.path.with_suffix(".binding")
        listener: socket.socket | None = None
        try:
            if not _private_directory(self.path.parent):
                return False
            binding.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(binding))
            listener.listen(64)
            os.replace(binding, self.path)
        except OSError as exc:
            if listener is not None:  # nothing left behind: neither the socket nor its half-made file
                listener.close()
                binding.unlink(missing_ok=True)
            log.warning("no direct channel for this replica: %s", exc)
            return False
        self._socket = listener
        threading.Thread(target=self._accept, args=(listener,), name="mlgate-direct-accept", daemon=True).start()
        return True

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(); close alone does not
            self._socket.close()
            self.path.unlink(missing_ok=True)
            self._socket = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(connection,), name="mlgate-direct", daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            while True:
                try:
                    prefix = _receive(connection, _PREFIX.size)
                    if prefix is None:
                        return  # the gateway closed the connection
                    header_bytes, payload_bytes = _PREFIX.unpack(prefix)
                    _check_lengths(header_bytes, payload_bytes)
                    header = orjson.loads(_receive(connection, header_bytes, required=True) or b"")
                    payload = _receive(connection, payload_bytes, required=True) or b""
                    reply = self._answer(header, payload)
                    _send(connection, reply)
                except (OSError, ValueError) as exc:  # ConnectionError is an OSError
                    log.warning("direct channel connection dropped: %s", exc)
                    return

    def _answer(self, header: dict[str, Any], payload: bytes | bytearray) -> list[bytes | memoryview]:
        try:
            if "layout" in header:
                outputs = None if self._run_shared is None else self._run_shared(Layout.from_json(header["layout"]),
                                                                                   bool(header.get("warm_up", False)))
                if not outputs:
                    return encode(segment=ABSENT if outputs is None else WRITTEN)
                return encode([outputs])  # they did not fit the room the gateway left: they come back in the frame
            return encode([self._run(decode_arrays(header, payload), bool(header.get("warm_up", False)))])
        except Exception as exc:
            return encode(error=f"{type(exc).__name__}: {exc}")


def _receive(connection: socket.socket, size: int, required: bool = False) -> bytearray | None:
    """Exactly ``size`` bytes; None at a clean end of stream before the first byte (unless ``required``)."""
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        count = connection.recv_into(view[received:])
        if count == 0:
            if received == 0 and not required:
                return None
            raise ConnectionError("the peer closed the connection mid-frame")
        received += count
    return buffer


def _send(connection: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """All of ``buffers``, in as few system calls as the kernel allows (no joining copy)."""
    pending = [memoryview(b).cast("B") for b in buffers if len(b)]
    while pending:
        sent = connection.sendmsg(pending)
        while sent:
            if sent >= len(pending[0]):
                sent -= len(pending.pop(0))
            else:
                pending[0] = pending[0][sent:]
                sent = 0


# ----------------------------------------------------------------------------------------- gateway side


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]

MAX_CONNECTIONS = 8
"""Connections (so replica threads) per replica and gateway process; more batches in flight wait for one.
The batcher bounds them anyway (``batching.max_inflight_batches`` per replica, 2 by default, shared among the
gateway processes)."""


class _Replica:
    """One replica's socket and this gateway's connections to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.idle: list[Connection] = []
        self.connections = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.in_flight = 0
        self.broken = False

    def release(self, connection: Connection | None) -> None:
        """Give a connection back (None: it was closed) and wake one caller waiting for it."""
        if connection is None or self.broken:
            self.connections -= 1
            if connection is not None:
                connection[1].close()
        else:
            self.idle.append(connection)
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def close(self) -> None:
        self.broken = True
        for _, writer in self.idle:
            writer.close()
        self.connections -= len(self.idle)
        self.idle.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)


class DirectReplicas:
    """A gateway's channel to one deployment's replicas on its node.

    ``usable`` says whether to use it at all: only while this node holds at least ``replicas``
    live sockets, i.e. every replica Serve runs (else Serve's router must spread the batches).
    A batch goes to the replica with the fewest of this gateway's batches in flight."""

    def __init__(self, directory: Path, replicas: int) -> None:
        self.directory = directory
        self.replicas = replicas
        self._known: dict[Path, _Replica] = {}
        self._scanned_at = -RESCAN_S

    def usable(self) -> bool:
        now = time.monotonic()
        if now - self._scanned_at >= RESCAN_S:
            self._scan(now)
        return len(self._known) >= self.replicas

    async def call(self, parts: Parts, warm_up: bool = False) -> Arrays:
        """Run one batch on a replica; ChannelDown if no connection could carry it, ReplicaError if it failed."""
        header, payload = await self._round_trip(encode(parts, warm_up))
        return decode_arrays(header, payload)

    async def call_shared(self, layout: Layout, warm_up: bool = False) -> Arrays | None:
        """Run one batch laid out in shared memory on a replica, as ``call`` does: its outputs if they came back
        in the reply, {} if the replica wrote them into the segment, None if it cannot see the segment."""
        header, payload = await self._round_trip(encode(warm_up=warm_up, layout=layout))
        segment = header.get("segment")
        if segment == ABSENT:
            return None
        return {} if segment == WRITTEN else decode_arrays(header, payload)

    async def _round_trip(self, frame: list[bytes | memoryview]) -> tuple[dict[str, Any], bytearray | bytes]:
        """Send ``frame`` to the replica with the fewest of this gateway's batches in flight; its reply."""
        replica = min(self._known.values(), key=lambda r: r.in_flight, default=None)
        if replica is None:
            raise ChannelDown("no replica socket on this node")
        replica.in_flight += 1
        try:
            connection = await self._connection(replica)
            try:
                reader, writer = connection
                writer.writelines(frame)
                header_bytes, payload_bytes = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
                _check_lengths(header_bytes, payload_bytes)
                header = orjson.loads(await reader.readexactly(header_bytes))
                payload = await reader.readexactly(payload_bytes)
            except BaseException as exc:  # broken, or cancelled mid-call: the stream's state is unknown
                connection[1].close()
                replica.release(None)
                if isinstance(exc, (OSError, EOFError, ValueError)):
                    self._forget(replica)
                    raise ChannelDown(f"{replica.path.name}: {exc}") from exc
                raise
            replica.release(connection)
        finally:
            replica.in_flight -= 1
        if "error" in header:
            raise ReplicaError(str(header["error"]))
        return header, payload

    def close(self) -> None:
        for replica in self._known.values():
            replica.close()
        self._known.clear()

    async def _connection(self, replica: _Replica) -> Connection:
        """An idle connection, a new one while there are fewer than ``MAX_CONNECTIONS``, else the next released."""
        while not replica.idle and replica.connections >= MAX_CONNECTIONS and not replica.broken:
            waiter = asyncio.get_running_loop().create_future()
            replica.waiters.append(waiter)
            await waiter
        if replica.broken:
            raise ChannelDown(f"{replica.path.name}: the replica's connection broke")
        if replica.idle:
            return replica.idle.pop()
        replica.connections += 1
        try:
            return await asyncio.open_unix_connection(str(replica.path), limit=1 << 20)
        except OSError as exc:
            replica.release(None)
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # nobody listens: its replica died
                self._forget(replica)
                replica.path.unlink(missing_ok=True)
            raise ChannelDown(f"{replica.path.name}: {exc}") from exc

    def _forget(self, replica: _Replica) -> None:
        replica.close()
        if self._known.get(replica.path) is replica:
            del self._known[replica.path]

    def _scan(self, now: float) -> None:
        self._scanned_at = now
        with contextlib.suppress(OSError):
            found = set(self.directory.glob("*.sock"))
            for path in found - self._known.keys():
                if _listening(path):
                    self._known[path] = _Replica(path)
            for path in self._known.keys() - found:
                self._forget(self._known[path])


def _listening(path: Path) -> bool:
    """Whether a replica listens on ``path``. A socket nobody listens on is a killed replica's: it is removed, so
    that it neither counts as a replica of this node nor takes batches (a Unix socket connects or refuses at once)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(str(path))
    except BlockingIOError:  # its backlog is full: alive
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return False
    except OSError:
        return False
    finally:
        probe.close()
    return True
