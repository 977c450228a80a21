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


def test_the_admin_api_aborts_a_running_rollout_whose_record_no_longer_reads(demo_repository: Path,
                                                                              tmp_path: Path) -> None:
    """It answered 409 "cannot be read" to abort as to every other action, leaving the challenger its traffic."""
    import asyncio
    import hashlib

    import httpx

    from gateway.admin_api import build_admin_app

    config_path = tmp_path / "mlgate.yaml"
    config_path.write_text(f"""
repository: {demo_repository}
state: {{path: {tmp_path / "state.db"}}}
auth: {{tokens: [{{name: otto, role: operator, sha256: {hashlib.sha256(b"secret").hexdigest()}}}]}}
models:
  {MODEL}: {{versions: ["1", "2"], routing: {{champion: "1", weights: {{"1": 75, "2": 25}}}}}}
""")
    gateway = create_gateway(load_config(config_path))
    try:
        record = start(RolloutSpec(model=MODEL, challenger="2"), "1", 1_000.0, "ada").model_dump(mode="json")
        gateway.store.write_rollout(MODEL, {**record, "state": "canary", "step": 99}, 0, note=None)
        app = build_admin_app(gateway.store, gateway.live, gateway.registry, gateway.auth, gateway.service.shadows,
                              gateway.drift, gateway.rollouts)

        async def post(action: str) -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client:
                return await client.post(f"/admin/v1/models/{MODEL}/rollout/{action}", json={"reason": "stuck"},
                                         headers={"Authorization": "Bearer secret"})

        paused = asyncio.run(post("pause"))
        assert paused.status_code == 409 and "cannot be read: step: 99" in paused.json()["error"]
        aborted = asyncio.run(post("abort"))
        assert aborted.status_code == 200, aborted.text
        assert aborted.json()["state"] == "rolled_back" and "aborted by otto: stuck" in aborted.json()["reason"]
        routing = gateway.store.routing(MODEL)
        assert routing is not None and routing.policy["weights"] == {"1": 100}
        active = gateway.live.get(MODEL)
        assert active is not None and active.policy.weights == {"1": 100}  # installed at once, not at the next poll
    finally:
        gateway.store.close()
        gateway.evidence.close()
