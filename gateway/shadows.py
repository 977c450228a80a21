"""Mirror a share of the champion's traffic to shadow versions and compare their answers.

A shadow runs after the champion has answered and the caller's response is on
its way: the mirror is a task the caller never awaits, it goes through the
shadow's own batcher (its own queue bound and admission), and whatever the
shadow does (slow, failing, overloaded) only shows in the shadow's counters.
At most ``max_in_flight`` requests per shadow are outstanding; beyond that
mirrors are dropped and counted, so a stuck shadow cannot grow memory.

Comparison, per row: integer and boolean outputs (labels) must be equal for
the row to agree; float outputs (probabilities) contribute their mean
absolute difference. Latency is compared as the ratio of summed answer times
over the same requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.registry import ServedVersion
from serving.batch_inputs import Arrays
from telemetry.metrics import ShadowMetrics
from telemetry.tracing import RequestTrace

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 256


@dataclass(frozen=True, slots=True)
class Comparison:
    rows: int
    agreeing_rows: int
    abs_diff_sum: float
    """Sum over rows of the row's mean absolute difference across float outputs."""


def compare_outputs(champion: Arrays, shadow: Arrays, rows: int) -> Comparison:
    """Compare two versions' outputs for the same rows, vectorised (no loop over rows or elements).

    An output the shadow lacks, or returns in another shape, makes every row disagree: a shadow
    that breaks the contract must not look good.
    """
    agree = np.ones(rows, dtype=bool)
    diff = np.zeros(rows, dtype=np.float64)
    float_outputs = 0
    for name, theirs_expected in champion.items():
        ours = shadow.get(name)
        if ours is None or ours.shape != theirs_expected.shape or ours.ndim == 0 or ours.shape[0] != rows:
            agree[:] = False
            continue
        expected = theirs_expected.reshape(rows, -1)
        got = ours.reshape(rows, -1)
        if expected.dtype.kind in "iub":
            agree &= (expected == got).all(axis=1)
        elif expected.dtype.kind == "f":
            diff += np.abs(expected.astype(np.float64) - got.astype(np.float64)).mean(axis=1)
            float_outputs += 1
    mean_diff = float(diff.sum()) / float_outputs if float_outputs else 0.0
    return Comparison(rows, int(np.count_nonzero(agree)), mean_diff)


@dataclass
class ShadowTally:
    """What ``mlgate status`` and the admin API show for one shadow (Prometheus has the same as counters)."""

    compared: int = 0
    failed: int = 0
    dropped: int = 0
    rows: int = 0
    agreeing_rows: int = 0
    abs_diff_sum: float = 0.0
    seconds: float = 0.0
    champion_seconds: float = 0.0

    @property
    def agreement(self) -> float | None:
        return self.agreeing_rows / self.rows if self.rows else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.rows if self.rows else None

    @property
    def latency_ratio(self) -> float | None:
        return self.seconds / self.champion_seconds if self.champion_seconds > 0 else None

    def to_json(self) -> dict[str, float | int | None]:
        return {"compared": self.compared, "failed": self.failed, "dropped": self.dropped, "rows": self.rows,
                "agreement": self.agreement, "mean_abs_diff": self.mean_abs_diff,
                "latency_ratio": self.latency_ratio}


@dataclass
class _Shadow:
    metrics: ShadowMetrics
    tally: ShadowTally = field(default_factory=ShadowTally)
    in_flight: int = 0


ComparisonObserver = Callable[[ServedVersion, Comparison], None]
"""Told about every comparison (the drift monitor keeps windowed agreement for the rollout controller)."""


class ShadowMirror:
    def __init__(self, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, observer: ComparisonObserver | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.observer = observer
        self._shadows: dict[tuple[str, str], _Shadow] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def tally(self, model: str) -> dict[str, ShadowTally]:
        return {version: s.tally for (m, version), s in self._shadows.items() if m == model}

    def mirror(self, shadow: ServedVersion, inputs: Arrays, rows: int, champion_outputs: Arrays,
               champion_seconds: float, trace: RequestTrace | None = None) -> None:
        """Send one request's inputs to ``shadow`` in the background; never raises, never blocks.

        ``trace``: the request's, when recorded; the shadow call gets a span under it, ended when the
        comparison is done (usually after the response has left).
        """
        state = self._state(shadow)
        if shadow.batcher is None or state.in_flight >= self.max_in_flight:
            state.tally.dropped += 1
            state.metrics.dropped.inc()
            return
        state.in_flight += 1
        call = None if trace is None else trace.child(f"shadow {shadow.version}", {"mlgate.version": shadow.version})
        task = asyncio.get_running_loop().create_task(
            self._run(shadow, state, inputs, rows, champion_outputs, champion_seconds, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, shadow: ServedVersion, state: _Shadow, inputs: Arrays, rows: int,
                   champion_outputs: Arrays, champion_seconds: float, trace: RequestTrace | None) -> None:
        tally, metrics = state.tally, state.metrics
        try:
            assert shadow.batcher is not None
            started = time.monotonic()
            outputs = await shadow.batcher.submit(inputs, rows, trace=trace)
            seconds = time.monotonic() - started
            result = compare_outputs(champion_outputs, outputs, rows)
            if trace is not None:
                trace.set("mlgate.shadow.agreeing_rows", result.agreeing_rows)
        except Exception as exc:  # whatever the shadow does stays in its counters
            tally.failed += 1
            metrics.failed.inc()
            log.debug("shadow %s failed: %s", shadow.label, exc)
            if trace is not None:
                trace.fail(str(exc))
            return
        finally:
            state.in_flight -= 1
            if trace is not None:
                trace.end()
        tally.compared += 1
        tally.rows += result.rows
        tally.agreeing_rows += result.agreeing_rows
        tally.abs_diff_sum += result.abs_diff_sum
        tally.seconds += seconds
        tally.champion_seconds += champion_seconds
        metrics.compared.inc()
        metrics.rows.inc(result.rows)
        metrics.agreeing_rows.inc(result.agreeing_rows)
        metrics.abs_diff.inc(result.abs_diff_sum)
        metrics.seconds.inc(seconds)
        metrics.champion_seconds.inc(champion_seconds)
        if self.observer is not None:
            try:
                self.observer(shadow, result)
            except Exception:  # a task nobody awaits: an escaping error would only be "never retrieved"
                log.exception("the comparison observer failed for %s", shadow.label)

    def _state(self, shadow: ServedVersion) -> _Shadow:
        key = (shadow.model, shadow.version)
        state = self._shadows.get(key)
        if state is None:
            state = self._shadows[key] = _Shadow(ShadowMetrics.for_version(shadow.model, shadow.version))
        return state

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
