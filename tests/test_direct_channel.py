"""The direct channel between a gateway and its co-located replicas, over real Unix sockets.

The replica's end runs in this process here (its threads stand in for a replica process); the
backend's use of it against a real Ray replica is in test_ray_backend.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from serving import direct_channel, shared_batch
from serving.direct_channel import (
    MAX_CONNECTIONS,
    ChannelDown,
    DirectReplicas,
    ReplicaError,
    ReplicaListener,
    channel_directory,
    decode_arrays,
    encode,
)
from serving.shared_batch import Arrays, Layout, Mappings, SegmentPool, write_outputs


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    tmp_path.chmod(0o700)
    return tmp_path / "channel"


def _double(inputs: Arrays, warm_up: bool) -> Arrays:
    if "fail" in inputs:
        raise ValueError(f"cannot run {inputs['fail'].shape[0]} rows")
    return {"y": inputs["x"] * 2, "warm_up": np.array(warm_up)}


@pytest.fixture
def listener(directory: Path) -> Iterator[ReplicaListener]:
    replica = ReplicaListener(directory, _double)
    assert replica.start()
    yield replica
    replica.close()


def _frame_arrays(arrays: Arrays) -> Arrays:
    """``arrays`` through encode and decode, as the other end sees them."""
    frame = b"".join(bytes(b) for b in encode([arrays], warm_up=True))
    header_bytes, payload_bytes = direct_channel._PREFIX.unpack(frame[:12])
    header = orjson.loads(frame[12:12 + header_bytes])
    assert header["warm_up"] is True
    payload = frame[12 + header_bytes:]
    assert len(payload) == payload_bytes
    return decode_arrays(header, payload)


def test_only_a_warm_up_frame_says_so() -> None:
    for warm_up, fields in ((False, {}), (True, {"warm_up": True})):
        frame = b"".join(bytes(b) for b in encode(warm_up=warm_up, layout="L"))
        header_bytes, _ = direct_channel._PREFIX.unpack(frame[:12])
        assert orjson.loads(frame[12:12 + header_bytes]) == {"layout": "L", **fields, "arrays": []}


def test_frames_carry_every_numeric_dtype_and_shape_exactly() -> None:
    rng = np.random.default_rng(0)
    arrays: Arrays = {
        "f4": rng.random((5, 3), dtype=np.float32),
        "f2": rng.random((2, 7)).astype(np.float16),
        "i8": rng.integers(-2**62, 2**62, (3, 2, 2)),
        "u1": rng.integers(0, 255, (9,), dtype=np.uint8),
        "b1": rng.random((4, 1)) > 0.5,
        "scalar": np.array(2.5),
        "no_rows": np.zeros((0, 30), dtype=np.float32),
        "strided": rng.random((6, 6))[::2, ::3],  # not contiguous: sent as a contiguous copy
    }
    decoded = _frame_arrays(arrays)
    assert decoded.keys() == arrays.keys()
    for name, array in arrays.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape, name
        np.testing.assert_array_equal(decoded[name], array, err_msg=name)
        assert decoded[name].ctypes.data % 8 == 0 or decoded[name].size == 0, f"{name} misaligned"


@pytest.mark.parametrize(("rows", "joined"), [((1, 4, 2), True), ((3000, 3500, 2800), False)])
def test_a_batch_of_several_requests_travels_as_one_array_per_input(rows: tuple[int, ...], joined: bool) -> None:
    """The replica reads one array of all the requests' rows, in order, whether small parts were joined into one
    buffer or large ones' buffers went into the frame as they are. Parts that cannot be one array are refused,
    not sent as garbage."""
    rng = np.random.default_rng(1)
    parts = [{"x": rng.random((n, 3), dtype=np.float32), "m": rng.random((n, 2, 2)) > 0.5} for n in rows]
    parts[1]["x"] = np.asfortranarray(parts[1]["x"])  # not C-contiguous
    frame = encode(parts)
    # prefix, header, x (one buffer, or one per part), a pad, m (4 bytes a row: small enough to join either way)
    assert len(frame) == 2 + (1 if joined else len(rows)) + 1 + 1
    body = b"".join(bytes(b) for b in frame[2:])
    assert direct_channel._PREFIX.unpack(frame[0]) == (len(frame[1]), len(body))
    decoded = decode_arrays(orjson.loads(frame[1]), body)
    for name in ("x", "m"):
        np.testing.assert_array_equal(decoded[name], np.concatenate([part[name] for part in parts]), err_msg=name)
    n = rows[0]
    wider = {"x": np.zeros((n, 4), np.float32), "m": parts[0]["m"]}
    with pytest.raises(ValueError, match="dimension 1" if joined else r"input 'x': parts of dtype float32 and shape"):
        encode([parts[0], wider])
    if not joined:  # joining converts a dtype that differs; large parts are not copied, so theirs must agree
        with pytest.raises(ValueError, match=r"input 'x': parts of dtype float64 and shape"):
            encode([parts[0], {"x": np.zeros((n, 3)), "m": parts[0]["m"]}])


def test_a_batch_goes_to_the_replica_and_back(directory: Path, listener: ReplicaListener) -> None:
    async def run() -> tuple[Arrays, Arrays]:
        channel = DirectReplicas(directory, replicas=1)
        assert channel.usable()
        x = np.arange(12, dtype=np.float32).reshape(4, 3)
        try:
            return await channel.call([{"x": x}]), await channel.call([{"x": x[:1]}], warm_up=True)
        finally:
            channel.close()

    outputs, warm = asyncio.run(run())
    np.testing.assert_array_equal(outputs["y"], np.arange(12, dtype=np.float32).reshape(4, 3) * 2)
    assert outputs["warm_up"] == np.array(False) and warm["warm_up"] == np.array(True)
    assert warm["y"].shape == (1, 3)


def test_a_failing_model_comes_back_as_a_replica_error_and_the_connection_lives_on(
        directory: Path, listener: ReplicaListener) -> None:
    async def run() -> Arrays:
        channel = DirectReplicas(directory, replicas=1)
        assert channel.usable()
        try:
            with pytest.raises(ReplicaError, match=r"ValueError: cannot run 3 rows"):
                await channel.call([{"x": np.zeros((3, 1)), "fail": np.zeros((3, 1))}])
            return await channel.call([{"x": np.ones((2, 1))}])
        finally:
            channel.close()

    np.testing.assert_array_equal(asyncio.run(run())["y"], np.full((2, 1), 2.0))


def _double_in_segment(mappings: Mappings, warm_ups: list[bool] | None = None) -> direct_channel.SharedRunner:
    """What a replica does with a layout (serving.deployment): its outputs into the segment if they fit. Each
    call's warm-up flag is appended to ``warm_ups``."""
    def run(layout: Layout, warm_up: bool) -> Arrays | None:
        if warm_ups is not None:
            warm_ups.append(warm_up)
        try:
            inputs, room = mappings.views(layout)
        except FileNotFoundError:
            return None
        outputs = {"y": inputs["x"] * 2}
        return {} if write_outputs(outputs, room) else outputs
    return run


def test_a_batch_in_shared_memory_crosses_the_channel_as_its_layout(directory: Path) -> None:
    warm_ups: list[bool] = []
    replica = ReplicaListener(directory, _double, _double_in_segment(Mappings(), warm_ups))
    assert replica.start()
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    fitting = SegmentPool(node_id="n1", output_rows={"y": ("<f4", (3,))})
    misfit = SegmentPool(node_id="n1", output_rows={"y": ("<f4", (2,))})  # room for two columns, not three

    async def run() -> tuple[Arrays | None, Arrays, Arrays | None, Arrays | None]:
        channel = DirectReplicas(directory, replicas=1)
        assert channel.usable()
        try:
            with fitting.batch([{"x": x}]) as batch:
                written = await channel.call_shared(batch.layout)
                in_segment = batch.read_outputs()
                assert await channel.call_shared(batch.layout, warm_up=True) == {}
            with misfit.batch([{"x": x}]) as batch:
                returned = await channel.call_shared(batch.layout)
                assert not np.any(batch.read_outputs()["y"])  # nothing written into a room that does not fit
            gone = Layout(shared_batch.segment_prefix(os.getpid()) + "999999", 0, "n1", 4096, (), ())
            absent = await channel.call_shared(gone)
            with pytest.raises(ReplicaError, match="not the name of a gateway's shared-memory segment"):
                await channel.call_shared(Layout("../../etc/passwd", 0, "n1", 4096, (), ()))
            return written, in_segment, returned, absent
        finally:
            channel.close()

    try:
        written, in_segment, returned, absent = asyncio.run(run())
    finally:
        replica.close()
        fitting.close()
        misfit.close()
    assert written == {}
    np.testing.assert_array_equal(in_segment["y"], x * 2)
    assert returned is not None
    np.testing.assert_array_equal(returned["y"], x * 2)
    assert absent is None  # the gateway then sends the batch through Ray
    assert warm_ups == [False, True, False, False, False]  # a warm-up's layout says so (exempt from injected errors)


def test_a_replica_without_shared_memory_says_it_cannot_see_the_segment(directory: Path,
                                                                        listener: ReplicaListener) -> None:
    pool = SegmentPool(node_id="n1", output_rows={"y": ("<f4", (1,))})

    async def run() -> Arrays | None:
        channel = DirectReplicas(directory, replicas=1)
        assert channel.usable()
        try:
            with pool.batch([{"x": np.ones((2, 1), np.float32)}]) as batch:
                return await channel.call_shared(batch.layout)
        finally:
            channel.close()

    try:
        assert asyncio.run(run()) is None
    finally:
        pool.close()


def test_the_channel_is_used_only_while_every_replica_listens_on_this_node(directory: Path,
                                                                           listener: ReplicaListener) -> None:
    assert not DirectReplicas(directory, replicas=2).usable()  # the other replica is elsewhere
    assert DirectReplicas(directory, replicas=1).usable()
    assert not DirectReplicas(directory.parent / "other-app", replicas=1).usable()


def test_a_stale_socket_is_removed_when_found_and_never_counted(directory: Path) -> None:
    assert direct_channel._private_directory(directory)
    stale = directory / "12345.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))  # bound once, never listening: what a killed replica leaves behind
    dead.close()
    assert not DirectReplicas(directory, replicas=1).usable()
    assert not stale.exists()


def test_a_replica_killed_between_calls_sends_the_batch_through_ray_and_its_socket_goes(directory: Path) -> None:
    assert direct_channel._private_directory(directory)
    path = directory / "12345.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    async def run() -> bool:
        channel = DirectReplicas(directory, replicas=1)
        assert channel.usable()
        server.close()  # SIGKILL: nobody listens any more, the file stays
        with pytest.raises(ChannelDown, match=r"12345\.sock"):
            await channel.call([{"x": np.ones((1, 1))}])
        return channel.usable()

    assert asyncio.run(run()) is False
    assert not path.exists()


def test_a_replica_that_dies_mid_batch_is_forgotten(directory: Path) -> None:
    assert direct_channel._private_directory(directory)
    path = directory / f"{os.getpid()}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def die_after_reading() -> None:
        while True:  # the gateway's probe first (connects, sends nothing), then the batch
            connection, _ = server.accept()
            received = connection.recv(1 << 16)
            connection.close()  # with a batch received: the replica's process died with it
            if received:
                return

    threading.Thread(target=die_after_reading, daemon=True).start()

    async def run() -> bool:
        channel = DirectReplicas(directory, replicas=1)
        assert channel.usable()
        with pytest.raises(ChannelDown):
            await channel.call([{"x": np.ones((1, 1))}])
        return len(channel._known) == 0

    try:
        assert asyncio.run(run())
    finally:
        server.close()


def test_concurrent_batches_share_a_bounded_number_of_connections(directory: Path) -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow(inputs: Arrays, warm_up: bool) -> Arrays:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return {"y": inputs["x"] + 1}

    replica = ReplicaListener(directory, slow)
    assert replica.start()

    async def run() -> list[Arrays]:
        channel = DirectReplicas(directory, replicas=1)
        assert channel.usable()
        try:
            return await asyncio.gather(*(channel.call([{"x": np.full((1, 1), float(i))}]) for i in range(40)))
        finally:
            channel.close()

    try:
        answers = asyncio.run(run())
    finally:
        replica.close()
    assert [float(a["y"][0, 0]) for a in answers] == [i + 1.0 for i in range(40)]  # each its own answer
    assert 1 < most <= MAX_CONNECTIONS


def test_no_channel_where_the_directory_is_not_private(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)  # others may write there: they could plant a socket the gateway would trust
    assert not ReplicaListener(tmp_path / "channel", _double).start()


def test_closing_a_replica_stops_its_accepting_thread_and_removes_its_socket(directory: Path) -> None:
    """Closing the socket alone left the thread blocked in accept() for the replica's life."""
    replica = ReplicaListener(directory, _double)
    assert replica.start()

    def accepting() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "mlgate-direct-accept" and t.is_alive()]

    threads = accepting()
    assert threads
    replica.close()
    for thread in threads:
        thread.join(timeout=5)
    assert not accepting()
    assert not replica.path.exists()


def test_a_replica_that_cannot_listen_leaves_no_file_behind(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / f"{os.getpid()}.sock").mkdir()  # the socket's place is taken: os.replace fails
    assert not ReplicaListener(directory, _double).start()
    assert sorted(p.name for p in directory.iterdir()) == [f"{os.getpid()}.sock"]


def test_clusters_and_applications_get_their_own_directories() -> None:
    first = channel_directory("127.0.0.1:6379", "breast-cancer--v1")
    assert first == channel_directory("127.0.0.1:6379", "breast-cancer--v1")
    assert first != channel_directory("127.0.0.1:6380", "breast-cancer--v1")
    assert first != channel_directory("127.0.0.1:6379", "breast-cancer--v2")
    assert len(str(first / f"{2**22}.sock")) < 100  # within a Unix socket path's 108 bytes
