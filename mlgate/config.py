"""The one YAML configuration file, validated by pydantic.

Every field has a default and a description, so an empty file is a valid
configuration and ``mlgate config check FILE`` can point at the exact field
that is wrong. Per-model (and per-version batching) sections replace the global ones whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from routing.policy import RoutingPolicy
from serving.repository import is_version_name


def _not_a_bool(value: Any) -> Any:
    """Lax pydantic reads ``true`` as 1 and ``false`` as 0: ``http_port: true`` bound port 1, ``replicas: yes``
    meant one replica. Strings stay accepted: YAML 1.1 reads ``1e3`` as the string "1e3", which is a number."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not true/false")
    return value


def _not_empty_path(value: Any) -> Any:
    """``''`` becomes Path('.'): an empty repository served every folder beside the config file as a model."""
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("empty_path", "Input should be a path, not an empty string")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool)]


def _version(value: Any) -> Any:
    """A version as the repository names its folders (``is_version_name``): ``versions: ['01']`` or a
    ``version_batching`` key ``v2`` could never match one, and the model was left out or the override ignored."""
    if not isinstance(value, str):
        raise PydanticCustomError("version_type", "Input should be a version in quotes, e.g. '1' (got {value})",
                                  {"value": repr(value)})
    if not is_version_name(value):
        raise PydanticCustomError("version_name", "Input should be a version: a positive integer without leading "
                                  "zeros, as the repository's folders are named (got {value})", {"value": repr(value)})
    return value


Version = Annotated[str, BeforeValidator(_version)]


class _Strict(BaseModel):
    # allow_inf_nan=False: .inf passed every ``ge``/``gt`` bound (a grace of .inf crashed shutdown in math.ceil,
    # an injected delay of .inf made warm-up wait forever) and .nan failed them with a misleading message.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ServerConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1, description="Address both servers bind to (an empty one would "
                      "bind every interface: say 0.0.0.0 or :: for that).")
    http_port: Int = Field(8000, ge=0, le=65535, description="OIP HTTP/REST port (0 = pick a free one).")
    grpc_port: Int = Field(8001, ge=0, le=65535, description="OIP gRPC port (0 = pick a free one).")
    max_request_bytes: Int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    grpc_max_message_bytes: Int = Field(
        64 * 1024 * 1024, ge=1024, le=2**31 - 1,
        description="Largest gRPC message accepted or sent (gRPC holds it in a C int: at most 2 GiB - 1).",
    )
    shutdown_grace_s: Float = Field(
        5.0, ge=0, le=3600, description="How long in-flight requests may finish on SIGTERM (at most an hour)."
    )
    workers: Int = Field(
        1, ge=1, le=64, description="Gateway processes sharing the HTTP and gRPC ports (SO_REUSEPORT: the kernel "
        "spreads connections). The first starts Ray and deploys the models; the others join it, load nothing "
        "twice and only listen once their models are ready. Metrics of all of them are served by each one's "
        "/metrics. Meant for machines with cores to spare beyond Ray's replicas, where one process's CPU (decode, "
        "encode, batching on one event loop) is the limit; each process batches on its own.")

    @model_validator(mode="after")
    def _two_ports(self) -> ServerConfig:
        """One port for both servers passed the check, then failed at listen, after Ray's start-up, as 'in use'."""
        if self.http_port == self.grpc_port != 0:
            raise ValueError(f"http_port and grpc_port are both {self.http_port}: HTTP and gRPC need a port each")
        return self


class RayConfig(_Strict):
    address: str | None = Field(
        None, description="Address of an existing Ray cluster to join; unset starts a local Ray in-process."
    )
    num_cpus: Int | None = Field(None, ge=1, description="CPUs a locally started Ray may use (default: all).")
    object_store_bytes: Int | None = Field(
        256 * 1024 * 1024, ge=78643200, description="Object store size of a locally started Ray."
    )


class BatchingConfig(_Strict):
    max_batch_rows: Int = Field(
        256, ge=1, description="Most rows one Ray call carries (capped by the model's own maximum)."
    )
    max_wait_ms: Float = Field(
        0.0,
        ge=0,
        le=10_000,
        description=(
            "Fixed time a partial batch waits for more requests while a replica slot is free (as Triton and "
            "@serve.batch do). 0 (default) = adaptive: dispatch whenever a slot is free, and wait only when the "
            "queue holds fewer rows than the batch size needed to keep up with the arrival rate, so a lone "
            "request at low load never waits. At most 10 s: a lone request waits this long."
        ),
    )
    max_inflight_batches: Int = Field(
        2, ge=1, description="Batches in flight per replica (2 overlaps one batch's transfer with another's compute)."
    )
    latency_objective_ms: Float | None = Field(
        None,
        gt=0,
        description=(
            "Latency objective (p99 target, from decode to answer) of each version of the model; unset = none. "
            "When set, an adaptive limit on rows queued or running, steered to where 1% of answers miss the "
            "objective, refuses requests with 429 before their body is read, and a partial batch waits for company "
            "no longer than the objective allows (docs/architecture.md). It cuts no request off: a request's own "
            "OIP 'timeout' parameter or gRPC deadline does, objective or not."
        ),
    )
    max_queue_rows: Int = Field(65536, ge=1, description="Most rows waiting per deployment; beyond it, 429.")


class DeploymentConfig(_Strict):
    replicas: Int = Field(1, ge=1, description="Ray Serve replicas of each model version.")
    num_cpus: Float = Field(
        0.5, gt=0, description="Ray CPUs reserved per replica; ONNX Runtime threads = max(1, floor(num_cpus))."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when Ray sees a GPU, CPU otherwise."
    )
    startup_timeout_s: Float = Field(
        120.0, gt=0, le=3600,
        description="How long a version may take to become ready before it is marked unavailable (at most an hour).",
    )
    direct_channel: bool = Field(
        True, description="Send batches to the replicas over a Unix socket instead of through Ray Serve's router "
        "(a tenth of the gateway's CPU per call alone, half to a third of the replica's per answer under load: "
        "loadtests/README.md, 'Direct channel'), while every replica of the version runs on the gateway's node; "
        "Serve still starts, checks and restarts them. Off: every batch goes through Ray."
    )


class FaultConfig(_Strict):
    """Faults injected into one version's replicas, for tests and game days (never set in production)."""

    delay_ms: Float = Field(0.0, ge=0, le=60_000, description="Extra time every batch takes on the replica "
                            "(at most a minute: warm-up runs batches with it and has no deadline of its own).")
    error_rate: Float = Field(0.0, ge=0, le=1, description="Fraction of batches the replica fails.")


class ModelConfig(_Strict):
    champion: Version | None = Field(
        None, description="Version that answers unversioned requests (default: highest ready version). "
        "Only seeds the routing on the model's first start; after that the state store holds it."
    )
    routing: RoutingPolicy | None = Field(
        None, description="Initial routing (split, sticky key, header rules, shadows, fallback), written to the "
        "state store on the model's first start; later changes go through the admin API."
    )
    versions: list[Version] | None = Field(
        None, description="Versions to serve (default: every version in the repository)."
    )
    batching: BatchingConfig | None = None
    version_batching: dict[Version, BatchingConfig] = Field(
        default_factory=dict,
        description="Batching overrides for single versions, by version (e.g. a tighter objective for a challenger).",
    )
    deployment: DeploymentConfig | None = None
    version_faults: dict[Version, FaultConfig] = Field(
        default_factory=dict, description="Faults to inject into single versions, by version (testing only)."
    )

    @model_validator(mode="after")
    def _one_champion(self) -> ModelConfig:
        if self.champion and self.routing and self.routing.champion != self.champion:
            raise ValueError(f"champion {self.champion!r} differs from routing.champion {self.routing.champion!r}")
        return self


class StateConfig(_Strict):
    path: Annotated[Path, BeforeValidator(_not_empty_path)] = Field(
        Path(".mlgate/state.db"),
        description="SQLite file holding routing, tokens and the audit log (relative to the config file's folder). "
        "Gateways sharing it share their routing.",
    )
    poll_interval_s: Float = Field(
        0.25, gt=0, le=1.0, description="How often a gateway checks the state file for changes by other processes."
    )


class TokenConfig(_Strict):
    name: str = Field(min_length=1, description="Who holds the token (appears in the audit log).")
    role: Literal["viewer", "operator", "admin"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the token; never the token.")


class AuthConfig(_Strict):
    tokens: list[TokenConfig] = Field(
        default_factory=list,
        description="Tokens defined in the config, in addition to those created through the admin API or "
        "'mlgate token create'. Names and hashes unique.",
    )
    require_token_for_inference: bool = Field(
        False, description="Whether OIP data-plane requests need a bearer token too (any role)."
    )

    @model_validator(mode="after")
    def _tokens_unique(self) -> AuthConfig:
        """One hash under two roles gave whichever came last; one name twice made the audit log ambiguous."""
        for what in ("name", "sha256"):
            values = [getattr(token, what) for token in self.tokens]
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"tokens: {what} {', '.join(repr(v) for v in twice)} given more than once")
        return self


class MonitoringConfig(_Strict):
    drift: bool = Field(
        True, description="Count every version's inputs, predictions, outcomes and latencies inline (drift "
        "histograms and the rollout controller's evidence). About a microsecond per batch per kernel call.")
    feature_rows_per_batch: Int = Field(
        1024, ge=0, description="Most rows of one batch the input-feature histograms count: a uniform sample, each "
        "sampled row weighing the rows it stands for, so that large requests do not spend the gateway's CPU on "
        "binning (4,096-row requests: a third of it when every row was counted). 0: every row.")
    window_s: Float = Field(
        60.0, gt=0, le=900, description="Window of the drift metrics and of 'mlgate drift' by default (seconds).")
    refresh_s: Float = Field(5.0, gt=0, le=300, description="How often the drift metrics are recomputed.")


class RolloutControllerConfig(_Strict):
    enabled: bool = Field(
        True, description="Run the rollout controller here. Gateways sharing a state file elect one by lease, so "
        "exactly one acts; turn it off to keep a gateway out of the election.")
    tick_s: Float = Field(1.0, gt=0, le=10, description="How often the controller judges every running rollout.")
    lease_ttl_s: Float = Field(
        5.0, gt=0, le=60, description="How long the controller's lease lasts unrenewed: another gateway takes over "
        "this long after the holder dies. More than two ticks, or the lease lapses between them.")

    @model_validator(mode="after")
    def _lease_outlives_ticks(self) -> RolloutControllerConfig:
        if self.lease_ttl_s <= 2 * self.tick_s:
            raise ValueError(f"lease_ttl_s ({self.lease_ttl_s:g}) must exceed two ticks (tick_s {self.tick_s:g}): "
                             "the holder renews at ticks, and would lose the lease between them")
        return self


class TracingConfig(_Strict):
    """OpenTelemetry tracing (off by default). A traced request's id comes back in ``x-mlgate-trace-id``."""

    enabled: bool = Field(False, description="Trace requests and export spans over OTLP. Off = no tracing code "
                          "runs on the request path at all.")
    endpoint: str = Field("http://127.0.0.1:4318/v1/traces",
                          description="OTLP/HTTP (protobuf) traces endpoint of a collector, Jaeger or Tempo.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent with every export "
                                    "(e.g. an API key of a hosted collector).")
    sampling_ratio: Float = Field(
        0.01, ge=0, le=1, description="Share of new traces recorded (parent-based: a caller's sampled "
        "traceparent is always continued, an unsampled one never).")
    service_name: str = Field("mlgate", min_length=1, description="OpenTelemetry service.name of the spans.")


class LogsConfig(_Strict):
    format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line (UTC ISO-8601 time, level, logger, event, fields); "
        "text: human-readable lines for a terminal.")
    access_log_sample: Float = Field(
        0.0, ge=0, le=1, description="Share of inference requests logged as one 'access' event each, with status, "
        "duration, request id and trace id (0 = none). Unexpected errors (500) are always logged with their "
        "request id (the caller's x-request-id or OIP id, else a generated one the error message names).")


class TelemetryConfig(_Strict):
    request_metrics: bool = Field(
        True, description="Count and time every inference request (mlgate_requests_total, "
        "mlgate_request_duration_seconds). Batching, routing and drift metrics are always kept.")
    tracing: TracingConfig = TracingConfig()
    logs: LogsConfig = LogsConfig()


class MlgateConfig(_Strict):
    server: ServerConfig = ServerConfig()
    ray: RayConfig = RayConfig()
    repository: Annotated[Path, BeforeValidator(_not_empty_path)] = Field(
        Path("models"), description="Model repository root (MODEL/VERSION/model.onnx + manifest.json)."
    )
    batching: BatchingConfig = BatchingConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    models: dict[str, ModelConfig] = Field(default_factory=dict, description="Per-model overrides, by model name.")
    state: StateConfig = StateConfig()
    auth: AuthConfig = AuthConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    rollouts: RolloutControllerConfig = RolloutControllerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    @model_validator(mode="after")
    def _champion_is_served(self) -> MlgateConfig:
        for name, model in self.models.items():
            if model.champion and model.versions is not None and model.champion not in model.versions:
                raise ValueError(f"models.{name}: champion {model.champion!r} is not in versions {model.versions}")
        return self

    def batching_for(self, model: str, version: str) -> BatchingConfig:
        """The version's own batching, else its model's, else the global one (whole sections, not field by field)."""
        override = self.models.get(model)
        if override is None:
            return self.batching
        return override.version_batching.get(version) or override.batching or self.batching

    def faults_for(self, model: str, version: str) -> FaultConfig | None:
        override = self.models.get(model)
        return override.version_faults.get(version) if override else None

    def deployment_for(self, model: str) -> DeploymentConfig:
        override = self.models.get(model)
        return override.deployment if override and override.deployment else self.deployment


class ConfigError(Exception):
    """A configuration file that cannot be used; the message lists every problem with its location."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping.

    Plain PyYAML keeps the last one silently: two ``server:`` sections, or ``http_port`` twice in one, lost
    the first without a word, so ``config check`` passed a file that did not say what its author read.
    Merge keys (``<<: *anchor``) still override what they merge, as YAML means them to.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: construct_mapping below says so with its position
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {first.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> Any:
    """The file's YAML document; ConfigError naming the file for anything that is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)  # marks say 'in "FILE", line N' rather than 'in "<unicode string>"'
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError as exc:  # thousands of nested brackets
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from exc
    except ValueError as exc:  # an integer of more than 4300 digits (int_max_str_digits)
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def with_overrides(config: MlgateConfig, **server: object) -> MlgateConfig:
    """``config`` with command-line values for ``server`` fields, validated as the file's are.

    ``model_copy(update=...)`` validates nothing: ``--http-port 70000`` reached ``socket.bind`` as an
    OverflowError traceback, ``--grpc-port`` equal to the HTTP port failed at listen after Ray's start-up.
    The message names the options (``--http-port``), not the config fields.
    """
    try:
        checked = ServerConfig.model_validate({**config.server.model_dump(), **server})
    except ValidationError as exc:
        lines = [f"command-line options: {exc.error_count()} problem(s):"]
        for err in exc.errors():
            where = "/".join(f"--{p}".replace("_", "-") for p in err["loc"]) or "--http-port/--grpc-port"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc
    return config.model_copy(update={"server": checked})


def load_config(path: Path) -> MlgateConfig:
    """Read and validate a config file. Relative repository and state paths resolve against the file's folder."""
    raw = _read_yaml(path)
    if raw is None:  # an empty file (or only comments): every default
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    try:
        config = MlgateConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {exc.error_count()} problem(s):"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc
    if not config.repository.is_absolute():
        config = config.model_copy(update={"repository": (path.parent / config.repository).resolve()})
    if not config.state.path.is_absolute():
        state = config.state.model_copy(update={"path": (path.parent / config.state.path).resolve()})
        config = config.model_copy(update={"state": state})
    return config
