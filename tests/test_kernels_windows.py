"""kernels.windows.WindowRing: lazy rotation, stale slots never counted, merge by addition.

The tests drive time by hand (the ring takes ``now`` from its caller), so every
boundary — a slot edge, a gap longer than the ring, a span that is not a whole number
of slots — is hit exactly rather than by sleeping.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.histograms import new_counts, pack_edges, update_counts
from kernels.windows import WindowRing


def test_current_slot_and_rotation() -> None:
    ring = WindowRing(n_slots=4, slot_s=5.0, shape=3)
    assert ring.window_s == 20.0 and ring.shape == (3,) and ring.n_slots == 4 and ring.slot_s == 5.0
    ring.current(0.0)[0] += 1
    ring.current(4.999)[0] += 1  # same slot 0
    assert ring.slot_id(4.999) == 0 and ring.slot_id(5.0) == 1
    ring.current(5.0)[1] += 10  # slot 1
    ring.current(19.9)[2] += 100  # slot 3
    assert ring.total(19.9).tolist() == [2, 10, 100]
    # t = 20 is slot 4, the position of slot 0: slot 0 is rotated out (zeroed) on access.
    slot = ring.current(20.0)
    assert slot.tolist() == [0, 0, 0]
    slot[0] += 1000
    assert ring.total(20.0).tolist() == [1000, 10, 100]


def test_current_is_a_writable_view_and_total_a_copy() -> None:
    ring = WindowRing(3, 1.0, (2, 2))
    view = ring.current(0.5)
    view += 1
    assert ring.current(0.7) is view, "the same slot is the same array object"
    total = ring.total(0.5)
    total += 100
    assert ring.total(0.5).tolist() == [[1, 1], [1, 1]], "total() returns a new array"


def test_stale_slots_are_excluded_without_being_touched() -> None:
    ring = WindowRing(n_slots=4, slot_s=1.0, shape=1)
    for t in range(4):
        ring.current(t + 0.5)[0] += 1 << t  # slots 0..3 hold 1, 2, 4, 8
    assert ring.total(3.5).tolist() == [15]
    # Read at t = 5.5 (slot 5) with no writes since: slots 0 and 1 are out of the window.
    assert ring.total(5.5).tolist() == [4 + 8]
    assert ring.total(6.0).tolist() == [8]
    assert ring.total(7.2).tolist() == [0]
    # A read "before" the slots (time going backwards) does not count slots after now.
    assert ring.total(1.5).tolist() == [1 + 2]


def test_gap_longer_than_the_ring() -> None:
    ring = WindowRing(n_slots=3, slot_s=2.0, shape=2)
    ring.current(0.0)[:] = 5
    ring.current(2.0)[:] = 7
    # 100 s of silence: every slot is stale; none is counted, and the first write clears its slot.
    assert ring.total(100.0).tolist() == [0, 0]
    slot = ring.current(101.0)  # slot 50, position 50 % 3 == 2, last held nothing
    slot[0] += 1
    ring.current(102.5)[1] += 1  # slot 51, position 0, held slot 0 (value 5): zeroed first
    assert ring.total(102.5).tolist() == [1, 1]


def test_total_over_a_span() -> None:
    ring = WindowRing(n_slots=12, slot_s=5.0, shape=1)
    for i in range(12):
        ring.current(i * 5.0 + 1.0)[0] += i + 1  # slot i holds i + 1
    now = 59.0  # slot 11
    assert ring.total(now).tolist() == [sum(range(1, 13))]
    assert ring.total(now, span_s=5.0).tolist() == [12]  # current slot only
    assert ring.total(now, span_s=0.1).tolist() == [12]  # rounded up to one slot
    assert ring.total(now, span_s=15.0).tolist() == [12 + 11 + 10]
    assert ring.total(now, span_s=15.0000001).tolist() == [12 + 11 + 10 + 9]
    assert ring.total(now, span_s=600.0).tolist() == [sum(range(1, 13))]  # at most the whole ring
    with pytest.raises(ValueError):
        ring.total(now, span_s=0.0)


def test_span_rounding_tolerates_float_division() -> None:
    ring = WindowRing(n_slots=10, slot_s=0.1, shape=1)
    for i in range(10):
        ring.current(i * 0.1 + 0.05)[0] += 1
    assert 0.3 / 0.1 < 3 < 0.30000000000000004 / 0.1
    assert ring.total(0.95, span_s=0.3).tolist() == [3]
    assert ring.total(0.95, span_s=0.30000000000000004).tolist() == [3]


def test_float_dtype_and_clear() -> None:
    ring = WindowRing(2, 1.0, 2, dtype=np.float64)
    ring.current(0.0)[:] += 0.25
    ring.current(1.0)[:] += 0.5
    total = ring.total(1.0)
    assert total.dtype == np.float64 and total.tolist() == [0.75, 0.75]
    ring.clear()
    assert ring.total(1.0).tolist() == [0.0, 0.0]


def test_time_running_backwards_past_the_ring_keeps_the_newer_slot() -> None:
    ring = WindowRing(2, 1.0, 1)
    ring.current(10.0)[0] += 3  # slot 10, position 0
    ring.current(8.0)[0] += 1  # slot 8, also position 0: older than what is held, lands in slot 10
    assert ring.total(10.0).tolist() == [4]


def test_rejects_bad_construction() -> None:
    with pytest.raises(ValueError):
        WindowRing(0, 1.0, 1)
    with pytest.raises(ValueError):
        WindowRing(2, 0.0, 1)
    with pytest.raises(ValueError):
        WindowRing(2, float("inf"), 1)


@settings(max_examples=50, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.floats(0.0, 200.0, allow_nan=False), st.integers(0, 2), st.integers(0, 2)),
        min_size=0,
        max_size=60,
    ),
    n_slots=st.integers(1, 8),
    slot_s=st.sampled_from([0.5, 1.0, 5.0]),
    span_slots=st.one_of(st.none(), st.integers(1, 10)),
)
def test_merge_by_addition_equals_the_combined_stream(
    events: list[tuple[float, int, int]], n_slots: int, slot_s: float, span_slots: int | None
) -> None:
    """Each event (time, bin, process) goes to one process's ring and to a ring of the combined stream.

    The sum of the processes' totals equals the combined ring's total, which equals a
    brute-force count of the events whose slot lies in the window.
    """
    events = sorted(events)  # each process's clock is monotonic
    rings = [WindowRing(n_slots, slot_s, 3) for _ in range(3)]
    combined = WindowRing(n_slots, slot_s, 3)
    for t, b, proc in events:
        rings[proc].current(t)[b] += 1
        combined.current(t)[b] += 1
    now = (events[-1][0] if events else 0.0) + slot_s * 1.5
    span = None if span_slots is None else span_slots * slot_s
    merged = sum((r.total(now, span) for r in rings), np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(merged, combined.total(now, span))
    k = n_slots if span_slots is None else min(n_slots, span_slots)
    current = int(np.floor(now / slot_s))
    expected = np.zeros(3, dtype=np.int64)
    for t, b, _ in events:
        if current - k < int(np.floor(t / slot_s)) <= current:
            expected[b] += 1
    np.testing.assert_array_equal(combined.total(now, span), expected)


def test_ring_of_packed_histograms() -> None:
    """The intended use: update_counts into ring.current(now), divergences on ring.total(now)."""
    edges, n_edges = pack_edges([[0.0, 1.0], [-1.0, 0.0, 1.0]])
    ring = WindowRing(12, 5.0, new_counts(edges).shape)
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(int(rng.integers(1, 20)), 2)) for _ in range(30)]
    everything = new_counts(edges)
    for i, batch in enumerate(batches):
        update_counts(ring.current(i * 2.0), edges, n_edges, batch)  # 30 batches over 60 s
        update_counts(everything, edges, n_edges, batch)
    np.testing.assert_array_equal(ring.total(59.0), everything)
    last_10s = new_counts(edges)
    for batch in batches[-5:]:  # t = 50, 52, ..., 58: slots 10 and 11
        update_counts(last_10s, edges, n_edges, batch)
    np.testing.assert_array_equal(ring.total(59.0, span_s=10.0), last_10s)


def test_slot_copy_is_the_held_slot_or_nothing() -> None:
    ring = WindowRing(n_slots=4, slot_s=1.0, shape=2)
    ring.current(10.5)[:] = (3, 4)
    copy = ring.slot_copy(10)
    assert copy is not None and copy.tolist() == [3, 4]
    copy[0] = 99  # a copy: the ring keeps its counts
    assert ring.slot_copy(10).tolist() == [3, 4]  # type: ignore[union-attr]
    assert ring.slot_copy(11) is None and ring.slot_copy(6) is None  # never written; same position, old lap
    assert ring.slots[ring.position(14.2)] is ring.current(14.2)  # position 2 again, a lap later: rotated
    assert ring.slot_copy(10) is None
