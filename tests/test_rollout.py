"""The rollout state machine (``routing.rollout``) driven by a fake clock and synthetic evidence.

Pure: no servers, no sleeps. ``Sim`` ticks a record once per simulated second,
as the controller does; evidence is built from numbers, the way the controller
computes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from routing.checks import RolloutChecks, VersionWindow, WindowEvidence, judge
from routing.policy import FallbackPolicy, HeaderRule, RoutingPolicy, StickyPolicy
from routing.rollout import (
    CONTROLLER_ACTOR,
    RolloutError,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    Traffic,
    abort,
    apply_traffic,
    desired_traffic,
    iso_utc,
    parse_duration,
    parse_steps,
    pause,
    promote,
    resume,
    start,
    tick,
)
from telemetry.evidence_store import RETENTION_S

T0 = 1_798_761_600.0  # 2027-01-01T00:00:00Z
S = RolloutState


def vw(requests: int = 200, errors: int = 2, p99: float | None = 0.010, rows: int = 400) -> VersionWindow:
    return VersionWindow(requests=requests, errors=errors, latency_p99_s=p99, rows=rows)


GOOD = WindowEvidence(
    window_s=10.0,
    champion=vw(),
    challenger=vw(),
    compared_rows=300,
    agreeing_rows=297,
    prediction_divergence=0.01,
    input_psi={"x0": 0.02, "x1": 0.03},
)
# What the window looks like when the challenger takes 100%: the champion answers (and mirrors) nothing.
FULL = replace(GOOD, champion=vw(0, 0, None, 0), compared_rows=0, agreeing_rows=0, prediction_divergence=None)
# Too few samples for every acting check.
SCARCE = replace(GOOD, challenger=vw(12, 0, 0.010, 20), compared_rows=10, agreeing_rows=10)

FAILING: dict[str, tuple[WindowEvidence, str]] = {
    "error_rate": (
        replace(GOOD, challenger=vw(errors=40)),
        "error_rate 0.19 > 0.05 for 3 consecutive windows",
    ),
    "latency_p99_ratio": (
        replace(GOOD, challenger=vw(p99=0.025)),
        "latency_p99_ratio 2.50 > 2.00 for 3 consecutive windows",
    ),
    "disagreement": (
        replace(GOOD, agreeing_rows=207),
        "disagreement 0.31 > 0.10 for 3 consecutive windows",
    ),
    "prediction_divergence": (
        replace(GOOD, prediction_divergence=0.3),
        "prediction_divergence 0.30 > 0.10 for 3 consecutive windows",
    ),
    "input_psi": (
        replace(GOOD, input_psi={"x0": 0.02, "x3": 0.31}),
        "input_psi 0.31 > 0.25 (feature 'x3') for 3 consecutive windows",
    ),
}


def realistic(record: RolloutRecord) -> WindowEvidence:
    """Passing evidence as the controller would see it at the record's traffic share."""
    return FULL if record.challenger_percent == 100 else GOOD


def spec(**kwargs: Any) -> RolloutSpec:
    kwargs.setdefault("model", "iris")
    kwargs.setdefault("challenger", "2")
    return RolloutSpec(**kwargs)


class Sim:
    """A rollout and a fake clock; ``run`` ticks once per ``dt`` seconds like the controller."""

    def __init__(self, s: RolloutSpec | None = None) -> None:
        self.now = T0
        self.record = start(s or spec(), "1", self.now, "alice")

    def run(self, evidence: WindowEvidence | None, ticks: int = 1, dt: float = 1.0) -> RolloutRecord:
        for _ in range(ticks):
            self.now += dt
            self.record = tick(self.record, evidence, self.now)
        return self.record

    def act(self, action: Callable[..., RolloutRecord], *args: Any) -> RolloutRecord:
        self.now += 0.5
        self.record = action(self.record, self.now, *args)
        return self.record

    def until(self, state: RolloutState, step: int, evidence: WindowEvidence | None = None) -> RolloutRecord:
        for _ in range(1000):
            if (self.record.state, self.record.step) == (state, step):
                return self.record
            self.run(evidence or realistic(self.record))
        raise AssertionError(f"never reached {state} step {step}: {self.record.reason}")


def fast(**kwargs: Any) -> Sim:
    """A rollout with 3 s holds, to reach a given step in a few ticks (each held one 10 s evidence window at least:
    ``RolloutRecord.hold_s``)."""
    kwargs.setdefault("interval_s", 3.0)
    return Sim(spec(**kwargs))


def path(record: RolloutRecord) -> list[tuple[str | None, str, int, int]]:
    return [
        (t.from_state.value if t.from_state else None, t.to_state.value, t.step, t.challenger_percent)
        for t in record.transitions
    ]


# ----------------------------------------------------------------------------------------------- happy path


def test_good_challenger_walks_from_shadow_to_promotion() -> None:
    sim = Sim()
    assert sim.record.state is S.SHADOW and sim.record.step == -1 and sim.record.challenger_percent == 0
    while not sim.record.state.terminal and sim.now < T0 + 1000:
        sim.run(realistic(sim.record))

    record = sim.record
    assert record.state is S.PROMOTED
    assert path(record) == [
        (None, "shadow", -1, 0),
        ("shadow", "canary", 0, 5),
        ("canary", "canary", 1, 25),
        ("canary", "canary", 2, 50),
        ("canary", "canary", 3, 100),
        ("canary", "promoted", 3, 100),
    ]
    # The first tick only sets the clock; each phase then needs 30 one-second ticks.
    assert [t.at for t in record.transitions] == [iso_utc(T0 + s) for s in (0, 31, 61, 91, 121, 151)]
    assert record.transitions[0].actor == "alice"
    assert {t.actor for t in record.transitions[1:]} == {CONTROLLER_ACTOR}
    assert record.transitions[1].reason == "shadow held 30 s with all checks passing; 5% of traffic to '2'"
    assert record.transitions[2].reason == "5% held 30 s with all checks passing; 25% of traffic to '2'"
    assert record.reason == (
        "100% held 30 s with all checks passing; '2' promoted to champion, '1' kept as previous champion"
    )
    assert record.previous_champion == "1" and record.champion == "1"
    assert record.failing == {}
    assert desired_traffic(record) == Traffic(champion="2", challenger="1", challenger_percent=0, mirror_percent=0)


def test_start_records_who_and_what() -> None:
    record = start(spec(mirror_percent=20), "1", T0, "alice")
    assert record.started_at == record.updated_at == "2027-01-01T00:00:00.000Z"
    assert record.last_tick is None and record.held_s == 0
    assert record.reason == "rollout started by alice: shadowing '2' on 20% of champion '1''s traffic"
    assert path(record) == [(None, "shadow", -1, 0)]


def test_start_refuses_the_champion_as_challenger() -> None:
    with pytest.raises(RolloutError, match="challenger '1' is already the champion of model 'iris'"):
        start(spec(challenger="1"), "1", T0, "alice")
    with pytest.raises(RolloutError, match="actor must be non-empty"):
        start(spec(), "1", T0, "")


def test_shadow_hold_defaults_to_interval_and_may_differ() -> None:
    assert spec(interval_s=20).shadow_hold_s == 20
    sim = Sim(spec(interval_s=20, shadow_s=5, checks=RolloutChecks(window_s=5)))
    sim.run(GOOD, 5)
    assert sim.record.state is S.SHADOW and sim.record.held_s == 4
    sim.run(GOOD)
    assert (sim.record.state, sim.record.step) == (S.CANARY, 0)


def test_a_step_shorter_than_the_evidence_window_is_held_one_window() -> None:
    """Advanced after its own 2 s, a step was passed on a 10 s window of mostly the step before (a smaller share)."""
    sim = Sim(spec(interval_s=2, shadow_s=0, checks=RolloutChecks(window_s=10)))
    sim.until(S.CANARY, 0)
    entered = sim.now
    sim.run(GOOD, 9)
    assert (sim.record.step, sim.record.held_s) == (0, 9)
    assert sim.record.reason == "canary at 5%: 9 of 10 s held with all checks passing"
    sim.run(GOOD)
    assert sim.record.step == 1 and sim.now - entered == 10  # the advancing window lay wholly within the step


def test_holding_reports_progress() -> None:
    sim = Sim()
    sim.run(GOOD, 13)
    assert sim.record.held_s == 12
    assert sim.record.reason == "shadow: 12 of 30 s held with all checks passing"


# ------------------------------------------------------------------------------------------------- rollback


@pytest.mark.parametrize("check", list(FAILING))
def test_each_check_rolls_back_after_exactly_failing_windows(check: str) -> None:
    sim = fast(checks=RolloutChecks(act_on_input_drift=True))
    sim.until(S.CANARY, 1)
    bad, reason = FAILING[check]

    sim.run(bad, 2)
    assert sim.record.state is S.CANARY and sim.record.failing == {check: 2}
    sim.run(GOOD)  # a pass resets the count
    assert sim.record.failing == {}
    sim.run(bad, 2)
    assert sim.record.state is S.CANARY and sim.record.failing == {check: 2}
    assert sim.record.reason.startswith(f"canary at 25%: holding; {check}: ")
    assert sim.record.reason.endswith("(2 of 3 failing windows)")

    sim.run(bad)
    record = sim.record
    assert record.state is S.ROLLED_BACK
    assert record.reason == reason
    assert record.challenger_percent == 0 and record.step == 1
    assert record.transitions[-1].model_dump() == {
        "at": iso_utc(sim.now),
        "from_state": S.CANARY,
        "to_state": S.ROLLED_BACK,
        "step": 1,
        "challenger_percent": 0,
        "reason": reason,
        "actor": CONTROLLER_ACTOR,
    }
    assert desired_traffic(record) == Traffic("1", "2", challenger_percent=0, mirror_percent=0)


def test_failing_windows_is_per_check() -> None:
    checks = RolloutChecks.model_validate({"disagreement": {"failing_windows": 1}})
    sim = fast(checks=checks)
    sim.run(FAILING["error_rate"][0], 2)
    assert sim.record.state is S.SHADOW and sim.record.failing == {"error_rate": 2}
    assert sim.run(FAILING["disagreement"][0]).state is S.ROLLED_BACK
    assert sim.record.reason == "disagreement 0.31 > 0.10 for 1 consecutive windows"


def test_several_checks_failing_together_are_all_named() -> None:
    both = replace(GOOD, agreeing_rows=207, prediction_divergence=0.3)
    sim = Sim()
    sim.run(both, 3)
    assert sim.record.reason == (
        "disagreement 0.31 > 0.10 for 3 consecutive windows; "
        "prediction_divergence 0.30 > 0.10 for 3 consecutive windows"
    )


def test_a_failing_window_credits_no_hold_time() -> None:
    sim = Sim()
    sim.run(GOOD, 3)
    held = sim.record.held_s
    sim.run(FAILING["error_rate"][0], 2)
    assert sim.record.held_s == held and sim.record.state is S.SHADOW
    sim.run(GOOD)
    assert sim.record.held_s == held + 1


def test_rollback_in_shadow_judges_mirrored_executions() -> None:
    sim = Sim()
    sim.run(FAILING["error_rate"][0], 3)
    assert sim.record.state is S.ROLLED_BACK
    assert path(sim.record)[-1] == ("shadow", "rolled_back", -1, 0)


def test_at_full_traffic_the_challengers_own_error_rate_still_rolls_back() -> None:
    sim = fast()
    sim.until(S.CANARY, 3)
    assert sim.record.challenger_percent == 100
    sim.run(replace(FULL, challenger=vw(errors=40)), 3)
    assert sim.record.state is S.ROLLED_BACK
    assert sim.record.reason == "error_rate 0.20 > 0.05 for 3 consecutive windows"


# ------------------------------------------------------------------------------------------------ input drift


def test_input_drift_over_act_only_warns_by_default() -> None:
    drifting = FAILING["input_psi"][0]
    sim = Sim()
    sim.until(S.CANARY, 0, drifting)  # it keeps advancing
    sim.run(drifting, 10)
    assert sim.record.state is S.CANARY and sim.record.failing == {}
    psi = next(r for r in sim.record.last_judgement if r.name == "input_psi")
    assert (psi.status, psi.value, psi.feature, psi.acting) == ("warn", 0.31, "x3", False)
    assert psi.detail == "input_psi: feature 'x3' PSI 0.31 > act 0.25 (warning only: act_on_input_drift is off)"


def test_input_drift_between_warn_and_act_warns_even_when_acting() -> None:
    checks = RolloutChecks(act_on_input_drift=True)
    result = judge(checks, replace(GOOD, input_psi={"a": 0.2})).result("input_psi")
    assert (result.status, result.detail) == ("warn", "input_psi: feature 'a' PSI 0.20 > warn 0.10")


def test_input_drift_without_enough_rows_holds_only_when_acting() -> None:
    few_rows = replace(GOOD, input_psi={})
    assert judge(RolloutChecks(), few_rows).conclusive
    judgement = judge(RolloutChecks(act_on_input_drift=True), few_rows)
    assert [r.detail for r in judgement.insufficient] == [
        "input_psi: no per-feature PSI (has the challenger a training reference?)"
    ]


# ------------------------------------------------------------------------------------------------ inconclusive


def test_too_few_samples_hold_traffic_keep_counters_and_resume_the_same_step() -> None:
    sim = fast()
    sim.until(S.CANARY, 1)
    sim.run(GOOD)
    sim.run(FAILING["disagreement"][0])
    held = sim.record.held_s
    assert sim.record.failing == {"disagreement": 1}

    sim.run(SCARCE, 50)
    record = sim.record
    assert record.state is S.INCONCLUSIVE
    assert (record.step, record.challenger_percent, record.held_s) == (1, 25, held)
    assert record.failing == {"disagreement": 1}
    assert record.resumed_state is S.CANARY
    assert record.reason == (
        "inconclusive: error_rate: 12 challenger requests in the 10 s window, need 50; "
        "latency_p99_ratio: 12 challenger requests in the 10 s window, need 50; "
        "disagreement: 10 compared rows in the 10 s window, need 50; "
        "prediction_divergence: 20 challenger rows in the 10 s window, need 200"
    )
    assert desired_traffic(record) == Traffic("1", "2", challenger_percent=25, mirror_percent=100.0)
    assert path(record)[-1] == ("canary", "inconclusive", 1, 25)  # one transition, not one per tick

    scarce = sim.record
    sim.run(GOOD)
    assert sim.record.state is S.CANARY and sim.record.step == 1 and sim.record.resumed_state is None
    assert sim.record.transitions[-1].reason == "evidence sufficient again; back to canary at 25%"
    assert sim.record.held_s == held + 1

    sim.record = scarce  # the same gap, but the challenger keeps disagreeing when samples come back
    sim.run(FAILING["disagreement"][0])
    assert sim.record.state is S.CANARY and sim.record.failing == {"disagreement": 2}
    assert sim.run(FAILING["disagreement"][0]).state is S.ROLLED_BACK  # 1 from before the gap + 2 = 3
    assert sim.record.reason == "disagreement 0.31 > 0.10 for 3 consecutive windows"


def test_a_failing_check_rolls_back_even_while_another_lacks_samples() -> None:
    bad_and_scarce = replace(FAILING["disagreement"][0], challenger=vw(12, 0, 0.010, 400))
    sim = Sim()
    sim.run(bad_and_scarce, 2)
    assert sim.record.state is S.INCONCLUSIVE and sim.record.failing == {"disagreement": 2}
    assert sim.run(bad_and_scarce).state is S.ROLLED_BACK
    assert path(sim.record)[-1] == ("inconclusive", "rolled_back", -1, 0)


def test_no_evidence_is_inconclusive() -> None:
    sim = Sim()
    sim.run(GOOD, 5)
    sim.run(None, 3)
    assert sim.record.state is S.INCONCLUSIVE and sim.record.held_s == 4
    assert sim.record.reason == "inconclusive: no evidence gathered for the window"
    assert sim.run(GOOD).state is S.SHADOW


def test_full_traffic_does_not_wait_for_champion_samples() -> None:
    judgement = judge(RolloutChecks(), FULL, champion_serves=False)
    assert judgement.passing
    latency = judgement.result("latency_p99_ratio")
    assert latency.status == "insufficient" and not latency.acting
    assert latency.detail.endswith("not required while the challenger takes 100% of traffic (nothing to compare with)")
    assert not judge(RolloutChecks(), FULL).conclusive


# ------------------------------------------------------------------------------------------------- the clock


def test_a_long_gap_credits_at_most_one_window() -> None:
    sim = Sim()
    sim.run(GOOD)
    sim.run(GOOD, dt=3600)  # the controller was down for an hour
    assert sim.record.held_s == 10 and sim.record.state is S.SHADOW


def test_a_clock_going_back_credits_nothing() -> None:
    sim = Sim()
    sim.run(GOOD, 3)
    sim.run(GOOD, dt=-5)
    assert sim.record.held_s == 2


def test_terminal_rollouts_only_note_the_tick() -> None:
    sim = Sim()
    sim.act(abort, "bob")
    before = sim.record
    after = sim.run(FAILING["error_rate"][0])
    assert after == before.model_copy(update={"last_tick": sim.now})


# ----------------------------------------------------------------------------------------- operator actions


def test_pause_holds_everything_and_resume_continues() -> None:
    sim = fast()
    sim.until(S.CANARY, 1)
    sim.run(GOOD)
    held, failing_judgement = sim.record.held_s, sim.record.last_judgement

    sim.act(pause, "bob", "checking dashboards")
    assert sim.record.state is S.PAUSED and sim.record.resumed_state is S.CANARY
    assert sim.record.reason == "paused by bob: checking dashboards"
    sim.run(FAILING["error_rate"][0], 20)  # not judged while paused
    assert (sim.record.state, sim.record.step, sim.record.held_s, sim.record.failing) == (S.PAUSED, 1, held, {})
    assert sim.record.last_judgement == failing_judgement
    assert desired_traffic(sim.record) == Traffic("1", "2", challenger_percent=25, mirror_percent=100.0)

    resumed = sim.act(resume, "bob")
    assert (resumed.state, resumed.step, resumed.resumed_state) == (S.CANARY, 1, None)
    assert sim.record.reason == "resumed by bob"
    sim.run(GOOD)
    assert sim.record.held_s == held + 1
    assert path(sim.record)[-2:] == [("canary", "paused", 1, 25), ("paused", "canary", 1, 25)]
    assert [t.actor for t in sim.record.transitions[-2:]] == ["bob", "bob"]


def test_pause_while_inconclusive_resumes_to_the_phase() -> None:
    sim = Sim()
    sim.run(SCARCE, 2)
    sim.act(pause, "bob")
    assert sim.record.resumed_state is S.SHADOW and sim.record.reason == "paused by bob"
    sim.act(resume, "bob")
    assert sim.record.state is S.SHADOW


def test_forced_promotion() -> None:
    sim = fast()
    sim.until(S.CANARY, 0)
    sim.act(promote, "alice", "urgent fix")
    record = sim.record
    assert (record.state, record.challenger_percent, record.previous_champion) == (S.PROMOTED, 100, "1")
    assert record.reason == "promoted by alice: urgent fix"
    assert path(record)[-1] == ("canary", "promoted", 0, 100)
    assert desired_traffic(record) == Traffic("2", "1", challenger_percent=0, mirror_percent=0)


def test_abort() -> None:
    sim = Sim()
    sim.act(pause, "bob")
    sim.act(abort, "carol", "latency spike on the dashboards")
    assert sim.record.state is S.ROLLED_BACK and sim.record.resumed_state is None
    assert sim.record.reason == "aborted by carol: latency spike on the dashboards"
    assert path(sim.record)[-1] == ("paused", "rolled_back", -1, 0)
    assert abort(Sim().record, T0, "carol").reason == "aborted by carol"


def test_refusals() -> None:
    running = Sim().record
    with pytest.raises(
        RolloutError, match=r"^cannot resume: rollout of model 'iris' to version '2' is shadow, not paused$"
    ):
        resume(running, T0, "bob")
    paused = pause(running, T0, "bob")
    with pytest.raises(RolloutError, match=r"^cannot pause: rollout of model 'iris' to version '2' is already paused$"):
        pause(paused, T0, "bob")
    with pytest.raises(RolloutError, match="actor must be non-empty"):
        pause(running, T0, "")


@pytest.mark.parametrize("end", [abort, promote])
@pytest.mark.parametrize("action", [pause, resume, promote, abort])
def test_terminal_rollouts_refuse_every_action(
    end: Callable[..., RolloutRecord], action: Callable[..., RolloutRecord]
) -> None:
    record = end(Sim().record, T0, "alice")
    name = action.__name__
    message = rf"^cannot {name}: rollout of model 'iris' to version '2' is already {record.state.value}; start a new"
    with pytest.raises(RolloutError, match=message):
        action(record, T0, "bob")


# ---------------------------------------------------------------------------------------------- traffic


BASE = RoutingPolicy(
    champion="1",
    weights={"1": 90, "4": 10},
    sticky=StickyPolicy(header="x-user"),
    header_rules=[HeaderRule(header="x-tester", value="yes", version="2")],
    shadows={"3": 10.0},
    fallback=FallbackPolicy(challenger_timeout_ms=50),
)


def kept(policy: RoutingPolicy) -> tuple[Any, ...]:
    return policy.sticky, policy.header_rules, policy.fallback


@pytest.mark.parametrize(
    ("traffic", "champion", "weights", "shadows"),
    [
        (Traffic("1", "2", 0, 100.0), "1", {"1": 100}, {"3": 10.0, "2": 100.0}),  # shadow
        (Traffic("1", "2", 25, 20.0), "1", {"1": 75, "2": 25}, {"3": 10.0, "2": 20.0}),  # canary
        (Traffic("1", "2", 100, 100.0), "1", {"2": 100}, {"3": 10.0, "2": 100.0}),  # last step
        (Traffic("1", "2", 0, 0.0), "1", {"1": 100}, {"3": 10.0}),  # rolled back
        (Traffic("2", "1", 0, 0.0), "2", {"2": 100}, {"3": 10.0}),  # promoted
    ],
)
def test_apply_traffic(traffic: Traffic, champion: str, weights: dict[str, int], shadows: dict[str, float]) -> None:
    policy = apply_traffic(BASE, traffic)
    assert (policy.champion, policy.weights, policy.shadows) == (champion, weights, shadows)
    assert kept(policy) == kept(BASE)


def test_apply_traffic_drops_the_new_champion_from_shadows() -> None:
    mirrored = BASE.model_copy(update={"shadows": {"2": 100.0, "3": 10.0}})
    assert apply_traffic(mirrored, Traffic("2", "1", 0, 0.0)).shadows == {"3": 10.0}


def test_desired_traffic_follows_the_record_through_a_rollout() -> None:
    sim = fast(mirror_percent=50)
    assert apply_traffic(BASE, desired_traffic(sim.record)).weights == {"1": 100}
    sim.until(S.CANARY, 2)
    policy = apply_traffic(BASE, desired_traffic(sim.record))
    assert (policy.weights, policy.shadows) == ({"1": 50, "2": 50}, {"3": 10.0, "2": 50.0})


# ---------------------------------------------------------------------------------------------- judge


def test_champion_without_requests_counts_as_error_rate_zero() -> None:
    ev = replace(GOOD, champion=vw(0, 0, None, 400), challenger=vw(100, 4))
    result = judge(RolloutChecks(), ev).result("error_rate")
    assert (result.status, result.value) == ("pass", 0.04)
    assert result.detail == "error_rate: challenger 0.04 - champion 0.00 = 0.04 <= 0.05"


def test_latency_needs_both_versions() -> None:
    result = judge(RolloutChecks(), replace(GOOD, champion=vw(requests=10))).result("latency_p99_ratio")
    assert result.detail == "latency_p99_ratio: 10 champion requests in the 10 s window, need 50"
    ok = judge(RolloutChecks(), GOOD).result("latency_p99_ratio")
    assert ok.detail == "latency_p99_ratio: challenger p99 10.0 ms / champion p99 10.0 ms = 1.00 <= 2.00"


def test_disagreement_says_how_many_rows_differ() -> None:
    result = judge(RolloutChecks(), replace(GOOD, compared_rows=200, agreeing_rows=170)).result("disagreement")
    assert (result.status, result.value) == ("fail", pytest.approx(0.15))
    assert result.detail == "disagreement: 30 of 200 compared rows differ = 0.15 > 0.10"


def test_divergence_needs_a_value() -> None:
    result = judge(RolloutChecks(), replace(GOOD, prediction_divergence=None)).result("prediction_divergence")
    assert (result.status, result.detail) == (
        "insufficient",
        "prediction_divergence: no divergence computed for the 10 s window",
    )


def test_disabled_checks_neither_fail_nor_hold() -> None:
    checks = RolloutChecks.model_validate({"disagreement": {"enabled": False}, "error_rate": {"enabled": False}})
    judgement = judge(checks, replace(SCARCE, challenger=vw(12, 12, 0.010, 400), compared_rows=300, agreeing_rows=0))
    assert judgement.result("disagreement").status == "disabled"
    assert [r.name for r in judgement.insufficient] == ["latency_p99_ratio"]
    assert judgement.failing == ()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: vw(requests=1, errors=2), r"errors \(2\) cannot exceed requests \(1\)"),
        (lambda: vw(rows=-1), "rows must be >= 0"),
        (lambda: vw(p99=float("nan")), "latency_p99_s must be a finite number >= 0"),
        (lambda: replace(GOOD, agreeing_rows=301), r"agreeing_rows \(301\) cannot exceed compared_rows \(300\)"),
        (lambda: replace(GOOD, prediction_divergence=float("inf")), "prediction_divergence must be a finite"),
        (lambda: replace(GOOD, input_psi={"x": -0.1}), r"input_psi\['x'\] must be a finite number >= 0"),
        (lambda: replace(GOOD, window_s=0), "window_s must be a finite number > 0"),
    ],
)
def test_evidence_is_validated(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# -------------------------------------------------------------------------------------------- config & parsing


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": [5, 25, 50]}, "the last step must be 100"),
        ({"steps": [5, 5, 100]}, r"steps\[1\]: 5 does not increase on the step before it \(5\)"),
        ({"steps": [0, 100]}, r"steps\[0\]: 0 is not a percentage in 1..100"),
        ({"steps": []}, "at least one step is needed"),
        ({"interval_s": 0}, "interval_s"),
        ({"mirror_percent": 0}, "mirror_percent"),
        ({"mirror_percent": 101}, "mirror_percent"),
        ({"checks": {"error_rate": {"threshold": 0}}}, "checks.error_rate.threshold"),
        ({"checks": {"disagreement": {"failing_windows": 0}}}, "checks.disagreement.failing_windows"),
        ({"checks": {"input_psi": {"warn": 0.3}}}, r"warn \(0.3\) must not exceed act \(0.25\)"),
        ({"checks": {"latency_p99_ratio": {"threshold": float("inf")}}}, "checks.latency_p99_ratio.threshold"),
        ({"checks": {"error_rate": {"treshold": 0.1}}}, "checks.error_rate.treshold"),
        # Booleans and strings are not numbers (lax pydantic started a rollout on [1, 100], 1 %, 1 s windows).
        ({"steps": [True, 100]}, r"steps\.0\n  Input should be a valid integer"),
        ({"steps": ["5", "100"]}, r"steps\.0\n  Input should be a valid integer"),
        ({"mirror_percent": True}, r"mirror_percent\n  Input should be a valid number"),
        ({"interval_s": "30"}, r"interval_s\n  Input should be a valid number"),
        ({"checks": {"window_s": True}}, r"checks\.window_s\n  Input should be a valid number"),
        ({"checks": {"error_rate": {"failing_windows": True}}}, "checks.error_rate.failing_windows"),
        ({"checks": {"error_rate": {"enabled": "no"}}}, r"error_rate\.enabled\n  Input should be a valid boolean"),
        ({"checks": {"act_on_input_drift": "off"}}, "checks.act_on_input_drift"),
        # A rate, a share or a JS divergence never exceeds 1: such a threshold (5 meant as 5 %) could never fail.
        ({"checks": {"error_rate": {"threshold": 5}}}, r"checks\.error_rate\.threshold\n  Input should be less than 1"),
        ({"checks": {"disagreement": {"threshold": 1}}}, r"checks\.disagreement\.threshold\n  Input should be less"),
        ({"checks": {"prediction_divergence": {"threshold": 2.0}}}, "checks.prediction_divergence.threshold"),
        # A window shorter than one evidence slot read a whole slot but credited only its own length per tick.
        ({"checks": {"window_s": 0.001}}, r"checks\.window_s\n  Input should be greater than or equal to 1"),
        # Accepted before: the rollout never advanced, or the check was inconclusive for ever.
        ({"interval_s": 1e300}, r"interval_s\n  Input should be less than or equal to 2592000"),
        ({"shadow_s": 1e300}, r"shadow_s\n  Input should be less than or equal to 2592000"),
        ({"checks": {"error_rate": {"min_requests": 10**30}}}, r"checks\.error_rate\.min_requests\n  Input should "
                                                                 "be less than or equal to 1000000000"),
        ({"checks": {"input_psi": {"failing_windows": 10**12}}}, "checks.input_psi.failing_windows"),
    ],
)
def test_spec_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutSpec.model_validate({"model": "iris", "challenger": "2", **kwargs})


def test_operator_settings_keep_their_types_through_a_record() -> None:
    """Strict for what operators send; a stored record (JSON: states as strings, 30 as an int) still reads."""
    settings = {"steps": [50, 100], "interval_s": 30, "mirror_percent": 50, "checks": {"window_s": 5}}
    s = RolloutSpec.model_validate({"model": "iris", "challenger": "2", **settings})
    assert (s.interval_s, s.mirror_percent, s.checks.window_s) == (30.0, 50.0, 5.0)
    record = start(s, "1", T0, "ada")
    assert RolloutRecord.model_validate(json.loads(json.dumps(record.model_dump(mode="json")))) == record


def test_parse_steps() -> None:
    assert parse_steps("5,25,50,100") == [5, 25, 50, 100]
    assert parse_steps(" 10%, 100% ") == [10, 100]
    assert parse_steps("100") == [100]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "steps: empty"),
        ("5,x,100", r"steps\[1\]: 'x' is not a whole percentage"),
        ("5,,100", r"steps\[1\]: '' is not a whole percentage"),
        ("5.5,100", r"steps\[0\]: '5.5' is not a whole percentage"),
        ("50,25,100", r"steps\[1\]: 25 does not increase"),
        ("5,25,50", "the last step must be 100"),
        ("5,101", r"steps\[1\]: 101 is not a percentage in 1..100"),
        ("\u0665,100", r"steps\[0\]: '\u0665' is not a whole percentage"),  # an Arabic-Indic 5
    ],
)
def test_parse_steps_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_steps(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1.5", 1.5), ("1h", 3600.0), (" 45 s ", 45.0), ("0", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'' is not a duration"),
        ("30sec", "'30sec' is not a duration; use seconds"),
        ("2d", "'2d' is not a duration"),
        ("nan", "'nan' is not a duration"),
        ("-5s", "'-5s': a duration must not be negative"),
        ("\u0663s", "is not a duration"),  # an Arabic-Indic 3: \\d matched it and float() read it
        ("\uff15m", "is not a duration"),  # a full-width 5
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


# ---------------------------------------------------------------------------------------------- persistence


def test_json_round_trip_and_continuation() -> None:
    sim = fast()
    sim.until(S.CANARY, 1, FAILING["input_psi"][0])
    sim.run(FAILING["disagreement"][0])
    sim.run(SCARCE)
    record = sim.record
    assert record.state is S.INCONCLUSIVE and record.failing and record.last_judgement

    restored = RolloutRecord.model_validate(json.loads(json.dumps(record.model_dump(mode="json"))))
    assert restored == record
    assert tick(restored, GOOD, sim.now + 1) == tick(record, GOOD, sim.now + 1)


def test_a_corrupt_record_is_refused() -> None:
    document = Sim().record.model_dump(mode="json")
    with pytest.raises(ValidationError, match=r"step: 4 is outside -1\.\.3"):
        RolloutRecord.model_validate({**document, "step": 4})
    with pytest.raises(ValidationError, match="a paused rollout must name shadow or canary"):
        RolloutRecord.model_validate({**document, "state": "paused"})


def test_an_evidence_window_longer_than_the_evidence_is_kept_is_refused() -> None:
    """window_s = 1e300 was accepted (201); every tick then failed reading the evidence (an SQLite integer overflow),
    and the rollout sat in shadow mirroring all traffic."""
    assert RolloutChecks(window_s=RETENTION_S).window_s == RETENTION_S
    with pytest.raises(ValidationError, match="less than or equal to 900"):
        RolloutChecks(window_s=1e300)


# ------------------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "iris", "--watch", "nan"], "--watch: nan is not a number of seconds >= 0"),  # was a traceback
        (["status", "iris", "--watch", "inf"], "--watch: inf is not a number of seconds >= 0"),  # was OverflowError
        (["status", "iris", "--watch", "-1"], "--watch: -1 is not a number of seconds >= 0"),
        (["start", "iris", "--challenger", "2", "--interval", "30sec"], "--interval: '30sec' is not a duration"),
        (["start", "iris", "--challenger", "2", "--shadow", "2d"], "--shadow: '2d' is not a duration"),
        (["start", "iris", "--challenger", "2", "--checks", "{bad"], "--checks: Expecting property name"),
        (["start", "iris", "--challenger", "2", "--checks", "[]"], "--checks: must be a JSON object"),
        (["start", "iris", "--challenger", "2", "--steps", "5,50"], "error: steps: the last step must be 100"),
    ],
)
def test_cli_names_the_option_it_refuses_before_calling_the_gateway(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from mlgate.rollout_cli import rollout_app

    result = CliRunner().invoke(rollout_app, [*args, "--url", "http://127.0.0.1:9", "--token", "t"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert message in result.output and "cannot reach" not in result.output
