"""What a challenger is judged on: the checks' settings, the evidence of one window, and the judgement.

Pure, like the state machine in ``routing.rollout`` that acts on its verdicts: the evidence comes in as
numbers the controller computed, validated so that a controller bug cannot pass as evidence, and each
check's verdict (pass, fail, warn, insufficient, disabled) comes back with a detail an operator can read
in ``mlgate rollout status``. Too few samples are ``insufficient``, never a failure: too little data is not
evidence of a bad model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from telemetry.evidence import SLOT_S
from telemetry.evidence_store import RETENTION_S

CheckName = Literal["error_rate", "latency_p99_ratio", "disagreement", "prediction_divergence", "input_psi"]
CheckStatus = Literal["pass", "fail", "warn", "insufficient", "disabled"]
# Checks that compare the challenger with the champion's own samples. When the challenger
# takes 100% of live traffic the champion answers nothing, so these cannot be measured.
_NEEDS_CHAMPION: frozenset[str] = frozenset({"latency_p99_ratio", "disagreement", "prediction_divergence"})


class FrozenValue(BaseModel):
    """Strict, immutable, finite: a record is a value, and NaN/inf would not survive a JSON round trip."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_COUNT = 10**9
"""Most failing windows or samples a check may ask for; a window never holds more (10**30 was accepted, and the check
was inconclusive for ever)."""


Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
"""A number of windows or samples a check asks for."""

Fraction = Annotated[float, Field(gt=0, lt=1)]
"""A threshold on a rate, a share or a base-2 divergence, none of which exceeds 1: a threshold of 1 or more (5 meant
as 5 %, say) could never fail."""


class OperatorSettings(FrozenValue):
    """What an operator sends: also strict in type, so ``true`` is not taken for 1, nor ``"30"`` for 30.0.

    Lax pydantic read ``"steps": [true, 100]`` as ``[1, 100]``, ``"mirror_percent": true`` as 1 % and
    ``"enabled": "no"`` as False, and the rollout started on values nobody wrote. Integers are still accepted
    where a float is wanted. (Records are not strict: their states arrive as JSON strings.)
    """

    model_config = ConfigDict(strict=True)


# --------------------------------------------------------------------------------------------- checks config


class _Check(OperatorSettings):
    enabled: bool = Field(True, description="Judge this check at all; a disabled check never holds or fails.")
    failing_windows: Count = Field(
        3, description=(
            "Consecutive failing judgements before the rollout is rolled back; a passing judgement resets the "
            "count, a judgement with too few samples leaves it as it is."
        ),
    )


class ErrorRateCheck(_Check):
    """Fails when the challenger errs more often than the champion on the same window."""

    threshold: Fraction = Field(
        0.05,
        description=(
            "Largest tolerated challenger error rate minus champion error rate (0.05 = 5 percentage points). "
            "A champion without requests in the window counts as error rate 0. Below 1: the difference of two "
            "rates never exceeds 1, so a threshold of 1 or more (5 meant as 5 %, say) could never fail."
        ),
    )
    min_requests: Count = Field(
        50, description=(
            "Challenger requests (live, and mirrored ones in the shadow phase) needed in the window for a verdict."
        ),
    )


class LatencyRatioCheck(_Check):
    """Fails when the challenger's tail latency is a multiple of the champion's."""

    threshold: float = Field(2.0, gt=0, description="Largest tolerated challenger p99 / champion p99.")
    min_requests: Count = Field(50, description="Requests needed in the window for both versions, so both p99s "
                                "mean something.")


class DisagreementCheck(_Check):
    """Fails when the challenger's answers differ from the champion's on the same inputs too often."""

    threshold: Fraction = Field(
        0.10,
        description=(
            "Largest tolerated share of compared rows where the two versions disagree (0.1 = 10 %). Below 1: "
            "a share never exceeds 1, so a threshold of 1 or more could never fail."
        ),
    )
    min_compared_rows: Count = Field(50, description="Rows answered by both versions (via mirroring) needed in "
                                     "the window for a verdict.")


class DivergenceCheck(_Check):
    """Fails when the challenger's prediction distribution drifts away from the champion's."""

    threshold: Fraction = Field(
        0.1,
        description=(
            "Largest tolerated Jensen-Shannon divergence (base 2, so in [0, 1]) between the two versions' "
            "prediction histograms. Below 1, as a threshold of 1 or more could never fail."
        ),
    )
    min_rows: Count = Field(200, description="Rows each version must have observed in the window.")


class InputPsiCheck(_Check):
    """Input drift of the challenger against its own training reference.

    Drifting inputs say the world changed, not that the challenger is worse than
    the champion (both see the same inputs), so by default it only warns; set
    ``RolloutChecks.act_on_input_drift`` to let it roll back.
    """

    warn: float = Field(0.1, gt=0, description="PSI above which a feature is reported (common practice: 0.1).")
    act: float = Field(
        0.25,
        gt=0,
        description=(
            "PSI above which a feature counts as a failing window when act_on_input_drift is on, and as a "
            "warning otherwise (common practice: 0.25)."
        ),
    )
    min_rows: Count = Field(200, description="Challenger input rows needed in the window for a verdict.")

    @model_validator(mode="after")
    def _warn_below_act(self) -> InputPsiCheck:
        if self.warn > self.act:
            raise ValueError(f"warn ({self.warn}) must not exceed act ({self.act})")
        return self


class RolloutChecks(OperatorSettings):
    """What the challenger is judged on every tick, always against the champion in the same window."""

    window_s: float = Field(
        10.0,
        ge=SLOT_S,
        le=RETENTION_S,
        description=(
            "Length of the evidence window the controller gathers each tick (a sliding window; ticks are about "
            f"a second apart), at most the {RETENTION_S:g} s the evidence is kept. One tick credits at most this "
            f"much held time. At least the evidence's {SLOT_S:g} s slot: a shorter window still reads a whole "
            "slot, but credited only its own length per tick, so every hold took many times as long as asked."
        ),
    )
    error_rate: ErrorRateCheck = Field(
        default_factory=ErrorRateCheck, description="Challenger error rate minus champion error rate."
    )
    latency_p99_ratio: LatencyRatioCheck = Field(
        default_factory=LatencyRatioCheck, description="Challenger p99 latency / champion p99 latency."
    )
    disagreement: DisagreementCheck = Field(
        default_factory=DisagreementCheck, description="Share of mirrored rows where the answers differ."
    )
    prediction_divergence: DivergenceCheck = Field(
        default_factory=DivergenceCheck, description="JS divergence of the prediction histograms."
    )
    input_psi: InputPsiCheck = Field(
        default_factory=InputPsiCheck, description="Largest per-feature PSI of the challenger's inputs."
    )
    act_on_input_drift: bool = Field(
        False,
        description=(
            "Let input_psi above 'act' count as failing windows (and roll back); off = it is only reported as a "
            "warning, and too few rows for it never hold the rollout."
        ),
    )

    def failing_windows(self, name: str) -> int:
        """How many consecutive failing judgements of check ``name`` make the rollout act."""
        return self._check(name).failing_windows

    def _check(self, name: str) -> _Check:
        checks: dict[str, _Check] = {
            "error_rate": self.error_rate,
            "latency_p99_ratio": self.latency_p99_ratio,
            "disagreement": self.disagreement,
            "prediction_divergence": self.prediction_divergence,
            "input_psi": self.input_psi,
        }
        return checks[name]


# ------------------------------------------------------------------------------------------------- evidence


def _count(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _finite(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class VersionWindow:
    """What one version did in the evidence window.

    For the challenger, ``requests``/``errors``/``latency_p99_s`` include its
    mirrored executions: they are real runs of the challenger on real inputs, and
    in the shadow phase they are all there is to judge.
    """

    requests: int  # requests this version answered or failed in the window (mirrored ones too, for the challenger)
    errors: int  # of those, failed
    latency_p99_s: float | None  # None when no requests
    rows: int  # input rows observed (live + mirrored) in the window

    def __post_init__(self) -> None:
        _count("requests", self.requests)
        _count("errors", self.errors)
        _count("rows", self.rows)
        if self.errors > self.requests:
            raise ValueError(f"errors ({self.errors}) cannot exceed requests ({self.requests})")
        _finite("latency_p99_s", self.latency_p99_s)


@dataclass(frozen=True)
class WindowEvidence:
    """Numbers the controller computed for one window; validated so a controller bug cannot pass as evidence."""

    window_s: float
    champion: VersionWindow
    challenger: VersionWindow
    compared_rows: int  # challenger rows compared with the champion's answers for the same inputs
    agreeing_rows: int
    prediction_divergence: float | None  # JS divergence (base 2) of the prediction histograms; None = not computed
    input_psi: Mapping[str, float]  # feature -> PSI of the challenger's inputs vs its training reference; may be empty

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be a finite number > 0, got {self.window_s}")
        _count("compared_rows", self.compared_rows)
        _count("agreeing_rows", self.agreeing_rows)
        if self.agreeing_rows > self.compared_rows:
            raise ValueError(f"agreeing_rows ({self.agreeing_rows}) cannot exceed compared_rows ({self.compared_rows})")
        _finite("prediction_divergence", self.prediction_divergence)
        for feature, psi in self.input_psi.items():
            _finite(f"input_psi[{feature!r}]", psi)


# ------------------------------------------------------------------------------------------------- judgement


class CheckResult(FrozenValue):
    """One check's verdict on one window, kept in the record for ``mlgate rollout status``."""

    name: CheckName
    status: CheckStatus = Field(
        description=(
            "pass / fail (this window exceeds the threshold) / warn (reported, never acted on) / insufficient "
            "(too few samples) / disabled."
        )
    )
    value: float | None = Field(None, description="The measured value; None when it could not be measured.")
    threshold: float = Field(description="The threshold it was compared with (input_psi: 'act').")
    detail: str = Field(description="Human-readable: the numbers behind the verdict.")
    feature: str | None = Field(None, description="input_psi: the feature with the largest PSI.")
    acting: bool = Field(
        True,
        description=(
            "Whether this result can move the rollout: count toward rollback, or hold it inconclusive. False for "
            "disabled checks, non-acting input drift, and champion comparisons while the champion serves nothing."
        ),
    )


@dataclass(frozen=True)
class Judgement:
    """Every check's verdict on one window."""

    results: tuple[CheckResult, ...]

    @property
    def failing(self) -> tuple[CheckResult, ...]:
        """Acting checks whose value exceeds their threshold in this window."""
        return tuple(r for r in self.results if r.status == "fail" and r.acting)

    @property
    def insufficient(self) -> tuple[CheckResult, ...]:
        """Acting checks that lack their minimum samples: they make the judgement inconclusive."""
        return tuple(r for r in self.results if r.status == "insufficient" and r.acting)

    @property
    def conclusive(self) -> bool:
        return not self.insufficient

    @property
    def passing(self) -> bool:
        """Conclusive with no failing check: the only kind of judgement that credits held time."""
        return self.conclusive and not self.failing

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)


def judge(checks: RolloutChecks, evidence: WindowEvidence, *, champion_serves: bool = True) -> Judgement:
    """Judge one window of evidence with every check.

    ``champion_serves=False`` says the challenger takes all live traffic (the
    last step, 100%): the champion then answers and mirrors nothing, so the
    checks that compare with its samples (latency ratio, disagreement,
    divergence) are still judged when samples happen to exist (header rules may
    pin some traffic to it), but lacking them no longer holds the rollout.
    The error-rate check keeps working there: a champion without requests
    counts as error rate 0, so the challenger's own rate is judged.
    """
    results: tuple[CheckResult, ...] = (
        _error_rate(checks.error_rate, evidence),
        _latency_ratio(checks.latency_p99_ratio, evidence),
        _disagreement(checks.disagreement, evidence),
        _divergence(checks.prediction_divergence, evidence),
        _input_psi(checks.input_psi, checks.act_on_input_drift, evidence),
    )
    if not champion_serves:
        results = tuple(_not_required_at_full_traffic(r) for r in results)
    return Judgement(results)


def _not_required_at_full_traffic(result: CheckResult) -> CheckResult:
    if result.name not in _NEEDS_CHAMPION or result.status != "insufficient":
        return result
    detail = f"{result.detail}; not required while the challenger takes 100% of traffic (nothing to compare with)"
    return result.model_copy(update={"acting": False, "detail": detail})


def fmt_value(x: float) -> str:
    """Two decimals ("0.31", "2.50"), or three significant digits where two decimals would hide the value."""
    two = f"{x:.2f}"
    return two if abs(float(two) - x) <= abs(x) * 0.01 else f"{x:.3g}"


def _secs(seconds: float) -> str:
    return f"{seconds:g}"


def _cmp(failed: bool) -> str:
    return ">" if failed else "<="


def _disabled(name: CheckName, threshold: float) -> CheckResult:
    return CheckResult(name=name, status="disabled", threshold=threshold, detail=f"{name}: disabled", acting=False)


def _insufficient(name: CheckName, threshold: float, what: str, acting: bool = True) -> CheckResult:
    return CheckResult(name=name, status="insufficient", threshold=threshold, detail=f"{name}: {what}", acting=acting)


def _few(count: int, what: str, window_s: float, need: int) -> str:
    return f"{count} {what} in the {_secs(window_s)} s window, need {need}"


def _against(name: CheckName, value: float, threshold: float, how: str) -> CheckResult:
    """``value`` passed or failed against ``threshold``; ``how`` says how the value was reached, in the detail."""
    failed = value > threshold
    detail = f"{name}: {how} = {fmt_value(value)} {_cmp(failed)} {fmt_value(threshold)}"
    return CheckResult(name=name, status="fail" if failed else "pass", value=value, threshold=threshold, detail=detail)


def _error_rate(cfg: ErrorRateCheck, ev: WindowEvidence) -> CheckResult:
    name: CheckName = "error_rate"
    if not cfg.enabled:
        return _disabled(name, cfg.threshold)
    ch, champ = ev.challenger, ev.champion
    if ch.requests < cfg.min_requests:
        return _insufficient(
            name, cfg.threshold, _few(ch.requests, "challenger requests", ev.window_s, cfg.min_requests)
        )
    ch_rate = ch.errors / ch.requests
    champ_rate = champ.errors / champ.requests if champ.requests else 0.0
    return _against(name, ch_rate - champ_rate, cfg.threshold,
                    f"challenger {fmt_value(ch_rate)} - champion {fmt_value(champ_rate)}")


def _latency_ratio(cfg: LatencyRatioCheck, ev: WindowEvidence) -> CheckResult:
    name: CheckName = "latency_p99_ratio"
    if not cfg.enabled:
        return _disabled(name, cfg.threshold)
    for who, window in (("challenger", ev.challenger), ("champion", ev.champion)):
        if window.requests < cfg.min_requests:
            return _insufficient(
                name, cfg.threshold, _few(window.requests, f"{who} requests", ev.window_s, cfg.min_requests)
            )
    ch_p99, champ_p99 = ev.challenger.latency_p99_s, ev.champion.latency_p99_s
    if ch_p99 is None or champ_p99 is None or champ_p99 <= 0:
        missing = "champion p99 is 0 s" if champ_p99 == 0 else "no p99 latency reported"
        return _insufficient(name, cfg.threshold, f"{missing} in the {_secs(ev.window_s)} s window")
    return _against(name, ch_p99 / champ_p99, cfg.threshold,
                    f"challenger p99 {ch_p99 * 1000:.1f} ms / champion p99 {champ_p99 * 1000:.1f} ms")


def _disagreement(cfg: DisagreementCheck, ev: WindowEvidence) -> CheckResult:
    name: CheckName = "disagreement"
    if not cfg.enabled:
        return _disabled(name, cfg.threshold)
    if ev.compared_rows < cfg.min_compared_rows:
        return _insufficient(
            name, cfg.threshold, _few(ev.compared_rows, "compared rows", ev.window_s, cfg.min_compared_rows)
        )
    return _against(name, 1.0 - ev.agreeing_rows / ev.compared_rows, cfg.threshold,
                    f"{ev.compared_rows - ev.agreeing_rows} of {ev.compared_rows} compared rows differ")


def _divergence(cfg: DivergenceCheck, ev: WindowEvidence) -> CheckResult:
    name: CheckName = "prediction_divergence"
    if not cfg.enabled:
        return _disabled(name, cfg.threshold)
    for who, window in (("challenger", ev.challenger), ("champion", ev.champion)):
        if window.rows < cfg.min_rows:
            return _insufficient(name, cfg.threshold, _few(window.rows, f"{who} rows", ev.window_s, cfg.min_rows))
    value = ev.prediction_divergence
    if value is None:
        return _insufficient(name, cfg.threshold, f"no divergence computed for the {_secs(ev.window_s)} s window")
    failed = value > cfg.threshold
    detail = f"{name}: JS divergence {fmt_value(value)} {_cmp(failed)} {fmt_value(cfg.threshold)}"
    return CheckResult(
        name=name, status="fail" if failed else "pass", value=value, threshold=cfg.threshold, detail=detail
    )


def _input_psi(cfg: InputPsiCheck, act_on_drift: bool, ev: WindowEvidence) -> CheckResult:
    name: CheckName = "input_psi"
    if not cfg.enabled:
        return _disabled(name, cfg.act)
    if ev.challenger.rows < cfg.min_rows:
        few = _few(ev.challenger.rows, "challenger rows", ev.window_s, cfg.min_rows)
        return _insufficient(name, cfg.act, few, acting=act_on_drift)
    if not ev.input_psi:
        return _insufficient(
            name, cfg.act, "no per-feature PSI (has the challenger a training reference?)", acting=act_on_drift
        )
    feature, value = max(ev.input_psi.items(), key=lambda item: (item[1], item[0]))
    over_act, over_warn = value > cfg.act, value > cfg.warn
    status: CheckStatus
    if over_act and act_on_drift:
        status, verdict = "fail", f"> act {fmt_value(cfg.act)}"
    elif over_act:
        status, verdict = "warn", f"> act {fmt_value(cfg.act)} (warning only: act_on_input_drift is off)"
    elif over_warn:
        status, verdict = "warn", f"> warn {fmt_value(cfg.warn)}"
    else:
        status, verdict = "pass", f"<= warn {fmt_value(cfg.warn)}"
    detail = f"{name}: feature {feature!r} PSI {fmt_value(value)} {verdict}"
    return CheckResult(
        name=name,
        status=status,
        value=value,
        threshold=cfg.act,
        detail=detail,
        feature=feature,
        acting=act_on_drift,
    )
