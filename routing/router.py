"""The per-request routing decision for one policy revision.

A ``Router`` is built once per ``RoutingPolicy`` revision and then called on
every request, so everything that does not depend on the request (cumulative
weights, per-version hash salts, header tables, the ``Route`` objects
themselves) is computed in ``__init__``; ``choose`` allocates nothing but the
key's hash.

Order of decision, as operators expect it:

1. header rules, in the order configured (an explicit override beats everything);
2. a routing key, if the request has one: sticky, by weighted rendezvous hashing;
3. otherwise a random pick by weight.

Why rendezvous hashing (highest random weight) rather than a consistent-hash ring:
each (key, version) pair gets an independent pseudo-random ``u`` in (0, 1) and
the key goes to the version with the highest ``-w / ln(u)``, i.e. the smallest
exponential "arrival time" ``-ln(u) / w``. The minimum of independent exponentials
with rates ``w_i`` falls on version ``i`` with probability exactly ``w_i / sum(w)``,
so the split is exact in expectation with no virtual nodes to tune. And because a
version's score depends only on the key, that version and its own weight, changing
one version's weight only moves keys into (raise) or out of (lower) that version:
no key ever moves between two other versions, which a ring re-sliced for new
weights cannot promise. Adding a version moves keys only into it; removing one
moves only its own keys. The cost is one score per version per request, which is
nothing at the handful of versions a model serves.

The hashes are blake2b and splitmix64, not Python's ``hash()``, so a key maps to
the same version in every gateway process and after every restart.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import blake2b
from math import log

from routing.champion import version_sort_key
from routing.policy import RoutingPolicy

_MASK64 = (1 << 64) - 1
_INV_2_52 = 2.0**-52
_NEG_INF = float("-inf")
_KEY_PERSON = b"mlgate/key"
_SALT_PERSON = b"mlgate/version"


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes and why (``rule`` is "header", "sticky" or "random")."""

    version: str
    variant: str  # "champion" or "challenger"
    rule: str


def key_hash(key: str) -> int:
    """Stable 64-bit hash of a routing key (the same in every process and Python run)."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8, person=_KEY_PERSON).digest(), "little")


def version_salt(version: str) -> int:
    """Stable 64-bit salt of a version name; its own personalisation keeps it apart from key hashes."""
    return int.from_bytes(blake2b(version.encode(), digest_size=8, person=_SALT_PERSON).digest(), "little")


def mix64(key: int, salt: int) -> int:
    """splitmix64's finalizer over ``key ^ salt``: a bijection with full avalanche, so the
    per-version values of one key behave as independent uniform 64-bit numbers."""
    x = key ^ salt
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def rendezvous_score(h: int, weight: float) -> float:
    """``ln(u) / w`` with ``u = (top 52 bits of h + 0.5) / 2**52``; the highest score wins.

    Ordering by ``ln(u) / w`` is the same as ordering by ``-w / ln(u)`` (both
    sides are monotone in each other for ``u`` in (0, 1)); dropping the low 12
    bits keeps ``u`` exact in a float and strictly inside (0, 1), so ``ln`` is
    finite and never zero.
    """
    return log(((h >> 12) + 0.5) * _INV_2_52) / weight


class Router:
    """Chooses a version per request under one policy revision; cheap to call, built once."""

    __slots__ = (
        "_cumulative",
        "_header_tables",
        "_only",
        "_random",
        "_random_routes",
        "_shadows",
        "_sticky",
        "_total",
        "policy",
    )

    def __init__(self, policy: RoutingPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._random = (rng if rng is not None else random.Random()).random

        def variant(version: str) -> str:
            return "champion" if version == policy.champion else "challenger"

        # Positive weights only, in a fixed order (not the document's), so equal
        # policies give identical routers and ties break the same way everywhere.
        weighted = sorted(
            ((v, w) for v, w in policy.effective_weights.items() if w > 0), key=lambda item: version_sort_key(item[0])
        )
        self._only: tuple[Route, Route] | None = None
        if len(weighted) == 1:
            version = weighted[0][0]
            self._only = (Route(version, variant(version), "sticky"), Route(version, variant(version), "random"))

        cumulative: list[int] = []
        total = 0
        for _, weight in weighted:
            total += weight
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total
        self._random_routes = [Route(v, variant(v), "random") for v, _ in weighted]
        self._sticky = tuple((version_salt(v), float(w), Route(v, variant(v), "sticky")) for v, w in weighted)

        # Header rules grouped by header: one lookup per distinct header, one dict
        # probe for its value; the rule index keeps "first rule in order wins".
        tables: dict[str, dict[str, tuple[int, Route]]] = {}
        for i, rule in enumerate(policy.header_rules):
            tables.setdefault(rule.header, {}).setdefault(
                rule.value, (i, Route(rule.version, variant(rule.version), "header"))
            )
        self._header_tables = tuple(tables.items())

        self._shadows = tuple((version, percent / 100.0) for version, percent in policy.shadows.items())

    def choose(self, routing_key: str | None, header: Callable[[str], str | None] | None = None) -> Route:
        """The version for one request.

        ``header(name)`` returns the request's value of a lowercase header name
        (or gRPC metadata key), or None; it is called only when there are header
        rules. ``routing_key`` None or empty means "no key": random by weight.
        """
        if header is not None and self._header_tables:
            best: tuple[int, Route] | None = None
            for name, table in self._header_tables:
                value = header(name)
                if value is not None:
                    hit = table.get(value)
                    if hit is not None and (best is None or hit[0] < best[0]):
                        best = hit
            if best is not None:
                return best[1]

        only = self._only
        if routing_key:
            if only is not None:
                return only[0]
            k = int.from_bytes(blake2b(routing_key.encode(), digest_size=8, person=_KEY_PERSON).digest(), "little")
            best_score = _NEG_INF
            chosen = self._sticky[0][2]
            for salt, weight, route in self._sticky:
                # mix64 and rendezvous_score, inlined: this loop is the hot path.
                x = k ^ salt
                x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
                x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
                x ^= x >> 31
                score = log(((x >> 12) + 0.5) * _INV_2_52) / weight
                if score > best_score:
                    best_score = score
                    chosen = route
            return chosen

        if only is not None:
            return only[1]
        return self._random_routes[bisect_right(self._cumulative, self._random() * self._total)]

    def shadows(self) -> tuple[str, ...]:
        """The shadows this request is mirrored to, each sampled independently with its percent.

        Shadows mirror the champion's traffic: the caller asks for requests the champion answers.
        """
        if not self._shadows:
            return ()
        draw = self._random
        return tuple(version for version, fraction in self._shadows if draw() < fraction)
