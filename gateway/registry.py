"""The gateway's view of every model version: its manifest, state and batcher.

It knows nothing of how versions are executed (that is ``serving``): a version
becomes ready when the composition root attaches a batcher to it, and
unavailable with a reason when loading it failed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gateway.batcher import Batcher
from gateway.errors import NotFound, quoted
from routing.champion import pick_default_version, version_sort_key
from serving.manifest import Manifest
from telemetry.metrics import record_device, record_model_state


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


_STATE_NAMES = [state.value.lower() for state in VersionState]


@dataclass
class ServedVersion:
    model: str
    version: str
    manifest: Manifest | None
    state: VersionState = VersionState.LOADING
    reason: str = ""
    batcher: Batcher | None = None
    device: str = ""

    @property
    def label(self) -> str:
        return f"model '{self.model}' version '{self.version}'"

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    def __post_init__(self) -> None:
        self._export_state()

    def mark_ready(self, batcher: Batcher, device: str) -> None:
        self.batcher, self.device, self.state, self.reason = batcher, device, VersionState.READY, ""
        self._export_state()
        record_device(self.model, self.version, device)

    def mark_unavailable(self, reason: str) -> None:
        self.batcher, self.state, self.reason = None, VersionState.UNAVAILABLE, reason
        self._export_state()

    def _export_state(self) -> None:
        record_model_state(self.model, self.version, self.state.value.lower(), _STATE_NAMES)


@dataclass
class ModelRegistry:
    """All served versions by model, plus each model's configured champion."""

    versions: dict[str, dict[str, ServedVersion]] = field(default_factory=dict)
    champions: dict[str, str | None] = field(default_factory=dict)

    def add(self, entry: ServedVersion) -> None:
        self.versions.setdefault(entry.model, {})[entry.version] = entry

    def models(self) -> list[str]:
        return sorted(self.versions)

    def all_versions(self) -> list[ServedVersion]:
        return [entry for model in self.models() for entry in self._sorted(model)]

    def versions_of(self, model: str) -> list[ServedVersion]:
        if model not in self.versions:
            raise NotFound(f"unknown model {quoted(model)}; served models: {', '.join(self.models()) or 'none'}")
        return self._sorted(model)

    def get(self, model: str, version: str | None) -> ServedVersion:
        """The version a request names, or the model's default version; NotFound with a precise message."""
        entries = self.versions.get(model)
        if entries is None:
            raise NotFound(f"unknown model {quoted(model)}; served models: {', '.join(self.models()) or 'none'}")
        if version is None:
            version = pick_default_version(self.champions.get(model), ((v, e.ready) for v, e in entries.items()))
        entry = entries.get(version) if version is not None else None
        if entry is None:
            known = ", ".join(e.version for e in self._sorted(model))
            missing = "no versions" if version is None else f"no version {quoted(version)}"
            raise NotFound(f"model {quoted(model)} has {missing}; versions: {known}")
        return entry

    def default_versions_ready(self) -> bool:
        """Server readiness: every model's default version is ready (failed extra versions don't count)."""
        return all(self.get(model, None).ready for model in self.versions)

    def _sorted(self, model: str) -> list[ServedVersion]:
        entries = self.versions[model].values()
        return sorted(entries, key=lambda e: version_sort_key(e.version))
