"""The routing every request of this process uses now, kept in step with the state store.

Requests read a plain dict (no lock, no I/O): the event loop is the only
writer, and it swaps whole ``ActiveRouting`` objects, so a request sees one
revision or the next, never half of each. The gateway's poller asks the
store whether anything changed (``data_version``, microseconds) and calls
``reload`` only then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from routing.policy import RoutingPolicy
from routing.router import Router
from routing.store import StateStore, StoredRouting

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActiveRouting:
    stored: StoredRouting
    policy: RoutingPolicy
    router: Router

    @property
    def revision(self) -> int:
        return self.stored.revision


class LiveRouting:
    def __init__(self, store: StateStore, on_change: Callable[[ActiveRouting], None] | None = None) -> None:
        self.store = store
        self._active: dict[str, ActiveRouting] = {}
        self._on_change = on_change

    def get(self, model: str) -> ActiveRouting | None:
        return self._active.get(model)

    def reload(self) -> list[str]:
        """Install every revision newer than the active one; the models whose routing changed."""
        changed = []
        for model, stored in self.store.all_routing().items():
            current = self._active.get(model)
            if current is not None and current.revision == stored.revision:
                continue
            if self.install(stored) is not None:
                changed.append(model)
        return changed

    def install(self, stored: StoredRouting) -> ActiveRouting | None:
        """Make a stored revision the active one (also right after this process wrote it)."""
        current = self._active.get(stored.model)
        if current is not None and current.revision >= stored.revision:
            return current
        try:
            policy = RoutingPolicy.model_validate(stored.policy)
            router = Router(policy)
        except (ValidationError, ValueError, ArithmeticError) as exc:  # written by hand, or by an older mlgate that
            # checked less: keep serving the last good revision (and keep polling, for tokens as for routing)
            log.error("routing of model '%s' revision %d in %s is invalid, keeping revision %s: %s",
                      stored.model, stored.revision, self.store.path,
                      current.revision if current else "none", exc)
            return None
        active = ActiveRouting(stored, policy, router)
        self._active[stored.model] = active
        log.info("routing of model '%s' is now revision %d (by %s): %s", stored.model, stored.revision,
                 stored.updated_by, policy.model_dump_json(exclude_defaults=True))
        if self._on_change is not None:
            self._on_change(active)
        return active
