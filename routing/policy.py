"""The routing policy operators configure for one logical model.

Two kinds of checks, kept apart on purpose:

* structural ones (negative weights, a shadow that is also the champion, ...) are
  pydantic validators, so a bad document is refused (422) before anyone asks
  which versions are served;
* ``RoutingPolicy.problems`` checks the policy against the versions actually
  served right now (exists, ready). That answer changes as versions load and
  unload, so it cannot be part of the model's own validity.

The models are frozen: a policy revision is a value, and a ``routing.router.Router``
is built once per revision from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from routing.champion import version_sort_key

Variant = Literal["champion", "challenger", "shadow"]

# RFC 9110 "token" characters, lowercased: what an HTTP field name may contain.
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


def _header_name(value: str) -> str:
    """Lowercased, because HTTP/2, ASGI and gRPC metadata all carry header names in lowercase."""
    name = value.lower()
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return name


HeaderName = Annotated[str, AfterValidator(_header_name)]


MAX_WEIGHT = 1_000_000
"""Largest weight of a split. The router works in floats: a 400-digit weight overflowed there, a revision holding
one failed to load in every other process (and on restart), and 10**308 made every unkeyed request fail."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeaderRule(_Strict):
    """Requests carrying ``header: value`` go to ``version`` (e.g. internal testers to a challenger)."""

    header: HeaderName = Field(description="HTTP header (or gRPC metadata key) name; matched case-insensitively.")
    value: str = Field(description="Header value that selects this rule; exact, case-sensitive match.")
    version: str = Field(min_length=1, description="Version that answers requests matching this rule.")

class StickyPolicy(_Strict):
    """Where the routing key comes from, so one user keeps seeing one version.

    The key is the value of ``header``, or else the OIP request parameter
    ``routing_key``. Requests without a key are split at random by weight.
    """

    header: HeaderName = Field(
        "x-routing-key",
        description=(
            "Header carrying the routing key; the OIP request parameter 'routing_key' is used when it is absent. "
            "Requests with the same key go to the same version while the weights stay the same; requests "
            "without a key are split at random."
        ),
    )

class FallbackPolicy(_Strict):
    """What happens when a challenger fails: the client should not pay for an experiment."""

    enabled: bool = Field(
        True,
        description="Retry a failed or too-slow challenger request on the champion, within the request's deadline.",
    )
    challenger_timeout_ms: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "How long a challenger may take before the champion is asked instead; "
            "unset = only the request's own deadline limits it."
        ),
    )
    default_response: dict[str, list[Any]] | None = Field(
        None,
        description=(
            "Per output name, a one-row answer as OIP would return it for a batch of one (e.g. label: [0], "
            "probabilities: [[0.5, 0.5]]); repeated for every row of a request when even the champion fails. "
            "Unset = the champion's error is returned."
        ),
    )

    @field_validator("default_response")
    @classmethod
    def _output_names(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if value is not None and any(not name for name in value):
            raise ValueError("default_response: output names must be non-empty")
        return value


class RoutingPolicy(_Strict):
    """Traffic split, sticky keys, header overrides, shadows and fallback for one logical model."""

    champion: str = Field(
        min_length=1, description="Version that answers by default and that failed challenger requests fall back to."
    )
    weights: dict[str, StrictInt] = Field(
        default_factory=dict,
        description=(
            f"Version -> non-negative integer weight of the traffic split, at most {MAX_WEIGHT:,} (percentages are "
            "weights summing to 100). Empty = all traffic to the champion."
        ),
    )
    sticky: StickyPolicy = Field(
        default_factory=StickyPolicy, description="Where the key that keeps a user on one version comes from."
    )
    header_rules: list[HeaderRule] = Field(
        default_factory=list,
        description="Header overrides, tried in order before the split; the first matching rule wins.",
    )
    shadows: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Version -> percent (0 < p <= 100) of the champion's traffic mirrored to it; its answers to "
            "mirrored requests are compared, never returned. A challenger may be mirrored too."
        ),
    )
    fallback: FallbackPolicy = Field(
        default_factory=FallbackPolicy, description="Retrying failed challenger requests on the champion."
    )

    @field_validator("weights")
    @classmethod
    def _valid_weights(cls, weights: dict[str, int]) -> dict[str, int]:
        for version, weight in weights.items():
            if not version:
                raise ValueError("weights: a version must be non-empty")
            if not 0 <= weight <= MAX_WEIGHT:
                raise ValueError(f"weights.{version}: weight must be from 0 to {MAX_WEIGHT:,}, got {weight}")
        if weights and not any(weights.values()):
            raise ValueError("weights: at least one weight must be positive (or leave weights empty)")
        return weights

    @field_validator("shadows")
    @classmethod
    def _valid_shadows(cls, shadows: dict[str, float]) -> dict[str, float]:
        for version, percent in shadows.items():
            if not version:
                raise ValueError("shadows: a version must be non-empty")
            if not 0 < percent <= 100:  # also refuses NaN
                raise ValueError(f"shadows.{version}: percent must be in (0, 100], got {percent}")
        return shadows

    @model_validator(mode="after")
    def _champion_is_no_shadow(self) -> RoutingPolicy:
        """The champion's traffic is what shadows mirror, so it cannot mirror to itself.

        A challenger with live weight may also be a shadow: it then answers its own share and is
        compared with the champion on a share of the champion's requests (a rollout keeps measuring
        label agreement on the same inputs while it moves traffic).
        """
        if self.champion in self.shadows:
            raise ValueError(f"shadows.{self.champion}: version {self.champion!r} is the champion")
        return self

    @classmethod
    def initial(cls, champion: str) -> RoutingPolicy:
        """All traffic to ``champion``: the policy a model starts with before anyone configures one."""
        return cls(champion=champion)

    @property
    def effective_weights(self) -> dict[str, int]:
        """The split actually applied: empty ``weights`` means everything to the champion."""
        return dict(self.weights) if self.weights else {self.champion: 1}

    def shares(self) -> dict[str, float]:
        """Each split version's share of unpinned traffic (0-1)."""
        weights = self.effective_weights
        total = sum(weights.values())
        return {version: weight / total for version, weight in weights.items()}

    def problems(self, versions: Mapping[str, bool]) -> list[str]:
        """What is wrong with this policy given the served ``versions`` (version -> ready); empty = fine.

        Every message starts with the field path (``champion``, ``weights.7``,
        ``header_rules[0].version``, ``shadows.3``) so an admin API can return
        them as they are.
        """
        listed = ", ".join(sorted(versions, key=version_sort_key)) or "(none)"
        found: list[str] = []

        def check(path: str, version: str) -> None:
            if version not in versions:
                found.append(f"{path}: version {version!r} does not exist; versions: {listed}")
            elif not versions[version]:
                found.append(f"{path}: version {version!r} is not ready")

        check("champion", self.champion)
        for version in self.weights:
            check(f"weights.{version}", version)
        for i, rule in enumerate(self.header_rules):
            check(f"header_rules[{i}].version", rule.version)
        for version in self.shadows:
            check(f"shadows.{version}", version)
        return found


def variant_of(policy: RoutingPolicy, version: str) -> Variant:
    """The ``variant`` metric label of ``version`` under ``policy`` (a bounded set, unlike version names)."""
    if version == policy.champion:
        return "champion"
    if version in policy.shadows and not policy.weights.get(version, 0):
        return "shadow"
    return "challenger"
