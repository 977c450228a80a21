"""A gateway process judges rollouts only once its models are loaded.

Before that it has no drift monitors, so it cannot read the evidence the other processes publish:
judging then would flip a running rollout to inconclusive (and back once loaded), audited, every time
a supervisor restarts. The gateway here is built from a real config and state file; no Ray is needed,
since nothing is deployed.
"""

from __future__ import annotations

from pathlib import Path

from mlgate.config import load_config
from mlgate.server import Gateway, create_gateway
from routing.controller import LEASE
from routing.rollout import RolloutSpec, RolloutState, start

MODEL = "breast-cancer"


def test_a_process_still_loading_its_models_leaves_rollouts_alone(demo_repository: Path, tmp_path: Path) -> None:
    config_path = tmp_path / "mlgate.yaml"
    config_path.write_text(f"""
repository: {demo_repository}
state: {{path: {tmp_path / "state.db"}}}
models:
  {MODEL}: {{versions: ["1", "2"], routing: {{champion: "1"}}}}
  breast-cancer-wide: {{versions: []}}
""")
    gateway = create_gateway(load_config(config_path))
    try:
        _check_loading_then_loaded(gateway)
    finally:
        gateway.store.close()
        gateway.evidence.close()


def _check_loading_then_loaded(gateway: Gateway) -> None:
    now = 1_000.0
    record = start(RolloutSpec(model=MODEL, challenger="2"), "1", now, "ada")
    gateway.store.write_rollout(MODEL, record.model_dump(mode="json"), 0, note=None)

    assert gateway._rollout_tick(now + 1) == []
    stored = gateway.store.rollout(MODEL)
    assert stored is not None and stored.record["state"] == RolloutState.SHADOW.value
    assert gateway.store.hold_lease(LEASE, "another process", 0.5, now + 1), "the loading process took the lease"

    # Loaded (here: only said to be, so it has no monitors either), it judges: without evidence, inconclusive.
    gateway.service.started = True
    [judged] = gateway._rollout_tick(now + 3)
    assert judged.state is RolloutState.INCONCLUSIVE and "no evidence" in judged.reason
