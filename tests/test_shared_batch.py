"""Shared-memory batches: both sides in one process over real /dev/shm segments (the Ray round trip is in
test_ray_backend.py)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from serving import shared_batch
from serving.shared_batch import Layout, Mappings, NoSharedMemory, SegmentPool, remove_orphans, write_outputs

OUTPUT_ROWS = {"probabilities": ("<f4", (2,)), "label": ("<i8", ())}


def _replica(mappings: Mappings, layout: shared_batch.Layout) -> bool:
    """What a replica does: read the inputs from the segment, write its outputs into it."""
    inputs, room = mappings.views(layout)
    x = inputs["features"]
    outputs = {"probabilities": np.stack([x[:, 0], -x[:, 0]], axis=1), "label": (x[:, 0] > 0).astype(np.int64)}
    return write_outputs(outputs, room)


def _names(pool_pid: int) -> set[str]:
    return {p.name for p in shared_batch.SHM_DIR.glob(shared_batch.segment_prefix(pool_pid) + "*")}


def test_a_batch_goes_in_and_its_outputs_come_back_through_one_reused_segment() -> None:
    pool, mappings = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS), Mappings()
    rng = np.random.default_rng(0)
    try:
        names = []
        for rows in (1000, 700, 1000):  # the smaller batch fits the first batch's segment
            x = rng.standard_normal((rows, 30)).astype(np.float32)
            requests = [{"features": part} for part in np.array_split(x, 3)]  # each copied to its rows' place
            with pool.batch(requests) as batch:
                assert _replica(mappings, batch.layout)
                outputs = batch.read_outputs()
                names.append(batch.layout.segment)
            np.testing.assert_array_equal(outputs["probabilities"][:, 0], x[:, 0])
            np.testing.assert_array_equal(outputs["label"], (x[:, 0] > 0).astype(np.int64))
        assert len(set(names)) == 1
        assert _names(os.getpid()) == set(names)
    finally:
        pool.close()
    assert _names(os.getpid()) == set()


def test_a_segment_whose_call_failed_is_unlinked_and_never_reused() -> None:
    """A replica running late could still write into it: reusing it could hand one batch another's outputs."""
    pool = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS)
    x = np.ones((10, 30), np.float32)
    try:
        with pytest.raises(TimeoutError), pool.batch([{"features": x}]) as batch:
            failed = batch.layout.segment
            raise TimeoutError
        assert failed not in _names(os.getpid())
        with pool.batch([{"features": x}]) as batch:
            assert batch.layout.segment != failed
    finally:
        pool.close()


def test_requests_that_cannot_be_one_batch_are_refused_and_their_segment_dropped() -> None:
    pool = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS)
    try:
        with pytest.raises(ValueError), pool.batch([{"features": np.ones((2, 30), np.float32)},
                                                    {"features": np.ones((2, 29), np.float32)}]):
            raise AssertionError("not reached")
        assert _names(os.getpid()) == set()
    finally:
        pool.close()


def test_outputs_that_do_not_fit_the_room_are_not_written() -> None:
    pool, mappings = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS), Mappings()
    try:
        with pool.batch([{"features": np.ones((4, 30), np.float32)}]) as batch:
            _, room = mappings.views(batch.layout)
            assert not write_outputs({"probabilities": np.ones((5, 2), np.float32),
                                      "label": np.ones(5, np.int64)}, room)
            assert not write_outputs({"probabilities": np.ones((4, 2), np.float64),
                                      "label": np.ones(4, np.int64)}, room)
            assert not np.any(batch.read_outputs()["probabilities"])  # nothing was written
    finally:
        pool.close()


def test_a_layout_survives_json_as_the_direct_channel_carries_it() -> None:
    pool = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS)
    try:
        with pool.batch([{"features": np.ones((3, 30), np.float32), "mask": np.ones((3, 2, 2), bool)}]) as batch:
            assert Layout.from_json(orjson.loads(orjson.dumps(batch.layout))) == batch.layout
    finally:
        pool.close()


def test_a_replica_maps_nothing_but_a_gateway_segment() -> None:
    """The name comes from a request over Ray or a socket: it must not open a file elsewhere."""
    for name in ("../../etc/passwd", "mlgate-batch-1-2-3/../../x", "something-else"):
        with pytest.raises(ValueError, match="not the name of a gateway's shared-memory segment"):
            Mappings().views(Layout(name, 0, "n1", 4096, (), ()))
    with pytest.raises(FileNotFoundError):  # well-formed, but not (or no longer) there
        Mappings().views(Layout(shared_batch.segment_prefix(os.getpid()) + "999999", 0, "n1", 4096, (), ()))


def test_a_recycled_segment_name_is_read_from_its_new_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new gateway process with a dead one's pid names its segments as that one did; the replica still maps the
    old, unlinked file under the name. It must read the new one: before the inode was in the layout, the second
    batch here read the first batch's values."""
    mappings = Mappings()
    first = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS)
    with first.batch([{"features": np.full((4, 30), 1.0, np.float32)}]) as batch:
        inputs, _ = mappings.views(batch.layout)
        assert (inputs["features"] == 1.0).all()
        name = batch.layout.segment
    first.close()  # unlinked; the replica's mapping of it is kept
    monkeypatch.setattr(shared_batch, "_serial", itertools.count(int(name.rsplit("-", 1)[1])))
    second = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS)
    try:
        with second.batch([{"features": np.full((4, 30), 2.0, np.float32)}]) as batch:
            assert batch.layout.segment == name
            inputs, _ = mappings.views(batch.layout)
            assert (inputs["features"] == 2.0).all()
    finally:
        second.close()


def test_no_shared_memory_is_a_distinct_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shared_batch, "SHM_DIR", tmp_path / "missing")
    with pytest.raises(NoSharedMemory), SegmentPool(node_id="n1", output_rows={}).batch([{"x": np.ones((1, 1))}]):
        pass


def test_orphans_of_dead_gateways_are_removed_and_live_ones_kept() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    orphan = shared_batch.SHM_DIR / (shared_batch.segment_prefix(int(dead.stdout)) + "0")
    # the same pid in another PID namespace (a container sharing this /dev/shm) may be alive there
    foreign = shared_batch.SHM_DIR / f"{shared_batch.PREFIX}{shared_batch.PID_NAMESPACE + 1}-{int(dead.stdout)}-0"
    pool = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS)
    try:
        with pool.batch([{"features": np.ones((1, 30), np.float32)}]) as batch:
            live = shared_batch.SHM_DIR / batch.layout.segment
        orphan.write_bytes(b"left by a gateway that died")
        foreign.write_bytes(b"a gateway in another PID namespace")
        assert remove_orphans() >= 1
        assert not orphan.exists()
        assert live.exists()
        assert foreign.exists()
    finally:
        orphan.unlink(missing_ok=True)
        foreign.unlink(missing_ok=True)
        pool.close()


def test_a_segment_leased_when_its_pool_closes_is_not_reused() -> None:
    """A batch still out when the deployment's pool closed: its segment was unlinked and unmapped by the close, and
    once put back in the pool the next batch failed on the closed mapping."""
    pool = SegmentPool(node_id="n1", output_rows=OUTPUT_ROWS)
    with pool.batch([{"features": np.ones((4, 30), np.float32)}]) as batch:
        pool.close()
        name = batch.layout.segment
    assert not (shared_batch.SHM_DIR / name).exists()
    with pool.batch([{"features": np.full((4, 30), 3.0, np.float32)}]) as batch:
        assert batch.layout.segment != name
        inputs, _ = Mappings().views(batch.layout)
        assert (inputs["features"] == 3.0).all()
    pool.close()
