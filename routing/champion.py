"""A model's champion when nobody named one, and the order of version names.

Unversioned requests follow the model's routing (``routing.router``); this rule
picks the champion that routing is seeded with when the config names none (the
newest servable version), and answers metadata and readiness calls for the
model as a whole. A configured champion that is not ready is still returned, so
the caller gets "not ready" rather than an answer from a version nobody chose.
"""

from __future__ import annotations

from collections.abc import Iterable


def pick_default_version(champion: str | None, versions: Iterable[tuple[str, bool]]) -> str | None:
    """``versions`` are (version, ready) pairs; returns None only when there are no versions at all.

    Runs per unversioned request: a configured champion is returned before anything is sorted.
    """
    if champion is not None:
        return champion
    ordered = sorted(versions, key=lambda item: version_sort_key(item[0]))
    ready = [v for v, is_ready in ordered if is_ready]
    if ready:
        return ready[-1]
    return ordered[-1][0] if ordered else None


def version_sort_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
