"""Configuration: defaults, precise errors with locations, and `mlgate config check`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.batcher import BatchPolicy
from mlgate.cli import app
from mlgate.config import ConfigError, MlgateConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_is_valid_and_resolves_the_repository_next_to_it() -> None:
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert config.server.http_port == 8000 and config.server.grpc_port == 8001
    assert config.server.host == "127.0.0.1"
    assert config.repository == (ROOT / "models").resolve()
    routing = config.models["breast-cancer"].routing
    assert routing is not None and routing.champion == "1"
    assert config.state.path == (ROOT / ".mlgate" / "state.db").resolve()  # beside the demo token, ignored by git


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    config = load_config(path)
    assert config.batching.max_wait_ms == 0.0
    assert config.deployment.device == "auto"


def test_every_problem_is_reported_with_its_location(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "server: {http_port: 70000, colour: blue}\n"
        "batching: {max_batch_rows: 0}\n"
        "models: {m: {champion: '3', versions: ['1', '2']}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "server.http_port: Input should be less than or equal to 65535" in message
    assert "server.colour: Extra inputs are not permitted" in message
    assert "batching.max_batch_rows: Input should be greater than or equal to 1" in message


def test_champion_must_be_among_served_versions(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models: {m: {champion: '3', versions: ['1', '2']}}\n")
    with pytest.raises(ConfigError, match=r"models.m: champion '3' is not in versions \['1', '2'\]"):
        load_config(path)


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        load_config(path)


def test_cli_config_check_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(ROOT / "configs" / "demo.yaml")])
    assert ok.exit_code == 0 and ": ok" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("ray: {num_cpus: 0}\n")
    failed = runner.invoke(app, ["config", "check", str(bad)])
    assert failed.exit_code == 2
    assert "ray.num_cpus: Input should be greater than or equal to 1" in failed.output
    missing = runner.invoke(app, ["config", "check", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_batching_resolves_version_then_model_then_global(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""
batching: {max_batch_rows: 64}
models:
  m:
    batching: {latency_objective_ms: 50}
    version_batching: {"3": {latency_objective_ms: 10}}
""")
    config = load_config(path)
    assert config.batching_for("m", "3").latency_objective_ms == 10
    assert config.batching_for("m", "1").latency_objective_ms == 50
    assert config.batching_for("other", "1").max_batch_rows == 64
    assert config.batching_for("other", "1").latency_objective_ms is None


def _batch_policy(config: MlgateConfig, *input_shapes: tuple[int, ...]) -> BatchPolicy:
    """``mlgate.server.batch_policy`` for version 1 of a model "m" whose inputs have these shapes."""
    from gateway.registry import ServedVersion
    from mlgate.server import batch_policy
    from serving.manifest import Manifest, TensorSpec

    manifest = Manifest(name="m", version="1", sha256="0" * 64,
                        inputs=tuple(TensorSpec(name=f"in{i}", datatype="FP32", shape=shape)
                                     for i, shape in enumerate(input_shapes)),
                        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),))
    return batch_policy(config, ServedVersion("m", "1", manifest))


@pytest.mark.parametrize(("workers", "replicas", "batches", "slots"),
                         [(1, 1, 2, 2), (1, 3, 2, 6), (2, 1, 2, 1), (2, 3, 2, 3), (3, 2, 2, 1), (8, 1, 2, 1),
                          (8, 1, 16, 2)])
def test_gateway_processes_share_the_replicas_batches_in_flight(tmp_path: Path, workers: int, replicas: int,
                                                                 batches: int, slots: int) -> None:
    """Each of ``server.workers`` processes batches on its own: each gets its share of the slots, rounded down so that
    together they stay within them, but at least one."""
    path = tmp_path / "workers.yaml"
    path.write_text(f"server: {{workers: {workers}}}\nmodels:\n  m:\n    deployment: {{replicas: {replicas}}}\n"
                    f"    batching: {{max_inflight_batches: {batches}}}\n")
    assert _batch_policy(load_config(path), (-1, 2)).max_inflight == slots


def test_only_a_version_with_a_variable_dimension_after_the_rows_batches_its_requests_by_shape(
        tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    config = load_config(path)
    assert not _batch_policy(config, (-1, 30)).variable_shapes
    assert not _batch_policy(config, (-1, 30), (-1, 4, 4)).variable_shapes
    assert _batch_policy(config, (-1, 30), (-1, -1)).variable_shapes  # a sequence of any length
    assert _batch_policy(config, (-1, 8, -1)).variable_shapes


def _problems(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


@pytest.mark.parametrize(("text", "where"), [
    ("batching: {latency_objective_ms: .inf}\n", "batching.latency_objective_ms"),
    ("batching: {max_wait_ms: .nan}\n", "batching.max_wait_ms"),
    ("server: {shutdown_grace_s: .inf}\n", "server.shutdown_grace_s"),  # crashed shutdown in math.ceil
    ("deployment: {startup_timeout_s: .inf}\n", "deployment.startup_timeout_s"),
    ("deployment: {num_cpus: -.inf}\n", "deployment.num_cpus"),
    ("models: {m: {version_faults: {'1': {delay_ms: .inf}}}}\n", "models.m.version_faults.1.delay_ms"),
])
def test_non_finite_numbers_are_refused_as_such(tmp_path: Path, text: str, where: str) -> None:
    """.inf passed every lower bound and .nan failed them with 'should be greater than 0'."""
    assert f"{where}: Input should be a finite number" in _problems(tmp_path, text)


@pytest.mark.parametrize(("text", "where"), [
    ("server: {http_port: true}\n", "server.http_port"),  # was port 1
    ("deployment: {replicas: yes}\n", "deployment.replicas"),
    ("batching: {latency_objective_ms: on}\n", "batching.latency_objective_ms"),
    ("ray: {num_cpus: false}\n", "ray.num_cpus"),
])
def test_a_boolean_is_not_a_number(tmp_path: Path, text: str, where: str) -> None:
    assert f"{where}: Input should be a number, not true/false" in _problems(tmp_path, text)


@pytest.mark.parametrize(("text", "where", "bound"), [
    ("server: {grpc_max_message_bytes: 4294967296}\n", "server.grpc_max_message_bytes", "2147483647"),
    ("server: {shutdown_grace_s: 1e300}\n", "server.shutdown_grace_s", "3600"),
    ("batching: {max_wait_ms: 1e12}\n", "batching.max_wait_ms", "10000"),
    ("deployment: {startup_timeout_s: 1e300}\n", "deployment.startup_timeout_s", "3600"),
    ("models: {m: {version_faults: {'1': {delay_ms: 1e300}}}}\n", "models.m.version_faults.1.delay_ms", "60000"),
    ("models: {m: {version_batching: {'2': {latency_objective_ms: 1e300}}}}\n",
     "models.m.version_batching.2.latency_objective_ms", "60000"),
])
def test_numbers_beyond_what_their_user_can_take_are_refused(tmp_path: Path, text: str, where: str,
                                                             bound: str) -> None:
    """gRPC keeps its message limit in a C int (a larger one was an OverflowError after Ray had started);
    a huge wait, delay or objective made requests or warm-up wait forever (a partial batch is held up to a
    quarter of the objective under event-loop pressure)."""
    assert f"{where}: Input should be less than or equal to {bound}" in _problems(tmp_path, text)


def test_integers_and_exponents_still_fill_float_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("batching: {latency_objective_ms: 50, max_wait_ms: 1e3}\ndeployment: {num_cpus: 1}\n")
    config = load_config(path)
    assert config.batching.latency_objective_ms == 50.0 and config.deployment.num_cpus == 1.0
    assert config.batching.max_wait_ms == 1000.0  # YAML 1.1 reads 1e3 as a string; it is still a number


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys without a word: the first server section vanished."""
    message = _problems(tmp_path, "server: {http_port: 9000}\nbatching: {}\nserver: {grpc_port: 9001}\n")
    assert "found duplicate key 'server' (first at line 1)" in message
    assert f'in "{tmp_path / "c.yaml"}", line 3' in message
    assert "found duplicate key 'http_port' (first at line 2)" in _problems(
        tmp_path, "server:\n  http_port: 9000\n  http_port: 9001\n")


def test_the_body_budget_defaults_to_512_mib_or_one_largest_request(tmp_path: Path) -> None:
    """A config raising max_request_bytes alone stays valid: the budget's default grows with it."""
    def budget(text: str) -> int:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        return load_config(path).server.body_budget_bytes

    assert budget("{}\n") == 512 * 1024 * 1024
    assert budget("server: {max_request_bytes: 1000000000}\n") == 1_000_000_000
    assert budget("server: {grpc_max_message_bytes: 900000000}\n") == 900_000_000
    assert budget("server: {max_inflight_body_bytes: 100000000}\n") == 100_000_000


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("batching: &tight {max_batch_rows: 8, max_wait_ms: 1}\n"
                    "models: {m: {batching: {<<: *tight, max_wait_ms: 2}, version_batching: {'2': *tight}}}\n")
    config = load_config(path)
    assert config.batching_for("m", "1").max_batch_rows == 8 and config.batching_for("m", "1").max_wait_ms == 2
    assert config.batching_for("m", "2").max_wait_ms == 1


@pytest.mark.parametrize(("content", "expected"), [
    (b"server: {http_port: \xff}\n", "not UTF-8 text (byte 20: invalid start byte)"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid YAML: nested too deeply"),
    (b"server: {http_port: 1" + b"0" * 5000 + b"}\n", "not valid YAML: Exceeds the limit (4300 digits)"),
    (b"server:\n\thttp_port: 1\n", "found character '\\t' that cannot start any token"),
])
def test_files_yaml_cannot_read_are_one_message_not_a_traceback(tmp_path: Path, content: bytes,
                                                                expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    failed = CliRunner().invoke(app, ["config", "check", str(path)])
    assert failed.exit_code == 2, failed.output
    assert f"error: {path}: " in failed.output and expected in failed.output
    assert failed.exception is None or isinstance(failed.exception, SystemExit)


def _tokens(*tokens: tuple[str, str, str]) -> str:
    return "auth: {tokens: [" + ", ".join(f"{{name: {n}, role: {r}, sha256: {h}}}" for n, r, h in tokens) + "]}\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("server: {http_port: 9000, grpc_port: 9000}\n",
     "server: http_port and grpc_port are both 9000: HTTP and gRPC need a port each"),
    ("server: {host: ''}\n", "server.host: String should have at least 1 character"),  # was every interface
    ("server: {host: '127.0.0.1:8000'}\n", "server.host: '127.0.0.1:8000' is neither an IP address nor a host "
     "name; give the port as http_port/grpc_port"),  # passed, then failed at bind
    ("server: {host: 'http://0.0.0.0'}\n", "without a scheme"),
    ("server: {host: '[::1]'}\n", "without brackets"),
    ("server: {host: 1.2.3.4.5}\n", "'1.2.3.4.5' is neither an IP address nor a host name"),
    ("server: {max_request_bytes: 2000000, max_inflight_body_bytes: 1000000}\n",
     "server: max_inflight_body_bytes (1000000) is below max_request_bytes (2000000): a request of the largest "
     "size allowed could never be served"),
    ("server: {max_request_bytes: 1024, max_inflight_body_bytes: 1000000}\n",
     "server: max_inflight_body_bytes (1000000) is below grpc_max_message_bytes (67108864)"),
    ("deployment: {replicas: 1e8}\n", "deployment.replicas: Input should be less than or equal to 1024"),
    ("batching: {max_inflight_batches: 65}\n",
     "batching.max_inflight_batches: Input should be less than or equal to 64"),
    ("repository: ''\n", "repository: Input should be a path, not an empty string"),  # was the config's folder
    ("state: {path: ''}\n", "state.path: Input should be a path, not an empty string"),
    ("models: {m: {versions: ['01']}}\n", "models.m.versions.0: Input should be a version: a positive integer "
     "without leading zeros, as the repository's folders are named (got '01')"),
    ("models: {m: {champion: 2}}\n", "models.m.champion: Input should be a version in quotes, e.g. '1' (got 2)"),
    ("models: {m: {version_batching: {v2: {}}}}\n", "models.m.version_batching.v2.[key]: Input should be a version"),
    ("models: {m: {version_faults: {'02': {}}}}\n", "models.m.version_faults.02.[key]: Input should be a version"),
    (_tokens(("a", "admin", "a" * 64), ("a", "viewer", "b" * 64)),
     "auth: tokens: name 'a' given more than once"),
    (_tokens(("a", "admin", "a" * 64), ("b", "viewer", "a" * 64)),
     f"auth: tokens: sha256 '{'a' * 64}' given more than once"),  # one token, two roles
])
def test_values_that_cannot_mean_what_they_say_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    """Each of these passed config check: a version name no repository folder can have left a model out or an
    override unapplied; an empty path or host meant the config's folder or every interface."""
    assert expected in _problems(tmp_path, text)


@pytest.mark.parametrize("host", ["127.0.0.1", "::", "fe80::1%lo", "localhost", "gateway-1.internal."])
def test_addresses_and_host_names_bind(tmp_path: Path, host: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"server: {{host: '{host}'}}\n")
    assert load_config(path).server.host == host


def test_ports_zero_may_both_be_picked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {http_port: 0, grpc_port: 0}\nmodels: {m: {champion: '10', versions: ['10']}}\n")
    assert load_config(path).server.http_port == 0


def test_champion_outside_versions_is_reported_at_the_model(tmp_path: Path) -> None:
    """It was reported at '(top level)', the model only in the text, and only the first such model."""
    message = _problems(tmp_path, "models: {m: {champion: '3', versions: ['1', '2']},\n"
                                  "         n: {champion: '1', versions: []}}\n")
    assert "  models.m: champion '3' is not in versions ['1', '2']" in message
    assert "  models.n: champion '1' is not in versions []" in message


@pytest.mark.parametrize(("text", "expected"), [
    ("server: {http_port: 0700}\n", "found 0700, which YAML 1.1 reads as 448 (octal): write 448 if that is meant"),
    ("server: {http_port: 1:30}\n", "found 1:30, which YAML 1.1 reads as 90 (base 60)"),
    ("server: {shutdown_grace_s: 1:30.5}\n", "found 1:30.5, which YAML 1.1 reads as 90.5 (base 60)"),
])
def test_yaml_1_1_octal_and_base_60_numbers_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    """``http_port: 0700`` bound port 448 and ``1:30`` was 90, without a word."""
    message = _problems(tmp_path, text)
    assert expected in message and "line 1" in message


def test_plain_hex_and_leading_zero_decimals_still_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {http_port: 0x1F40, grpc_port: 08001}\n")  # 08001 is no octal: a string, then 8001
    config = load_config(path)
    assert config.server.http_port == 8000 and config.server.grpc_port == 8001


def test_exponents_fill_integer_fields(tmp_path: Path) -> None:
    """YAML 1.1 hands ``1e8`` over as a string: it was 'unable to parse string as an integer'."""
    path = tmp_path / "c.yaml"
    path.write_text("server: {max_request_bytes: 1e8}\nray: {object_store_bytes: 2E9}\n"
                    "batching: {max_batch_rows: 2.5e2}\n")
    config = load_config(path)
    assert config.server.max_request_bytes == 100_000_000 and config.ray.object_store_bytes == 2_000_000_000
    assert config.batching.max_batch_rows == 250
    assert "batching.max_batch_rows: Input should be a valid integer" in _problems(
        tmp_path, "batching: {max_batch_rows: 2.5e0}\n")  # not whole: still refused


def test_a_tilde_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``repository: ~/models`` was a folder named '~' beside the config file."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "c.yaml"
    path.write_text("repository: ~/models\nstate: {path: ~/state.db}\n")
    config = load_config(path)
    assert config.repository == tmp_path / "home" / "models"
    assert config.state.path == tmp_path / "home" / "state.db"


@pytest.mark.parametrize(("text", "expected"), [
    ("deployment: {num_cpus: 0.00001}\n", "deployment.num_cpus: Input should be greater than or equal to 0.0001"),
    ("monitoring: {window_s: 0.5}\n", "monitoring.window_s: Input should be greater than or equal to 1"),
    ("monitoring: {refresh_s: 1e-9}\n", "monitoring.refresh_s: Input should be greater than or equal to 1"),
    ("state: {poll_interval_s: 1e-9}\n", "state.poll_interval_s: Input should be greater than or equal to 0.01"),
    ("rollouts: {tick_s: 0.0001, lease_ttl_s: 0.001}\n",
     "rollouts.tick_s: Input should be greater than or equal to 0.1"),
])
def test_numbers_below_what_their_user_can_take_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    """Ray refused the num_cpus after it had started; a sub-second window was read as one 1 s slot and shown as
    asked; the tiny intervals polled, recomputed or judged back to back, a core's worth of CPU."""
    assert expected in _problems(tmp_path, text)


@pytest.mark.parametrize(("text", "expected"), [
    ("endpoint: ''", "telemetry.tracing.endpoint: '' is not an http:// or https:// URL"),
    ("endpoint: 'collector:4318'", "'collector:4318' is not an http:// or https:// URL"),
    ("endpoint: 'http://collector:4318'", "'http://collector:4318' has no path: spans are posted to the URL as "
     "given, so name the collector's traces path, e.g. http://collector:4318/v1/traces"),
    ("endpoint: 'http://collector:99999/v1/traces'", "Port out of range"),
    ("headers: {'bad header': x}", "telemetry.tracing.headers: 'bad header' is not an HTTP header name"),
    ("headers: {a: \"x\\ny\"}", "a: value 'x\\ny' has a line break or leading whitespace"),
])
def test_tracing_settings_the_exporter_cannot_use_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    """Each passed config check; the exporter then logged a failure per batch and every span was lost."""
    assert expected in _problems(tmp_path, f"telemetry: {{tracing: {{enabled: true, {text}}}}}\n")


def test_usual_tracing_endpoints_still_pass(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("telemetry: {tracing: {enabled: true, endpoint: 'https://otlp.example.com/otlp/v1/traces', "
                    "headers: {Authorization: 'Basic abc', x-scope-orgid: t1}}}\n")
    assert load_config(path).telemetry.tracing.headers["x-scope-orgid"] == "t1"
