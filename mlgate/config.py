"""The one YAML configuration file, validated by pydantic.

Every field has a default and a description, so an empty file is a valid
configuration and ``mlgate config check FILE`` can point at the exact field
that is wrong. Per-model (and per-version batching) sections replace the global ones whole.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
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


def _home(path: Path) -> Path:
    """``~`` is the home folder, as in a shell: ``repository: ~/models`` was read as a folder named ``~`` beside
    the config file (``config check`` passed, ``serve`` said the repository does not exist)."""
    try:
        return path.expanduser()
    except RuntimeError as exc:  # ~nosuchuser, or no HOME
        raise PydanticCustomError("home_unknown", "Input should be a path whose ~ can be resolved ({reason})",
                                  {"reason": str(exc)}) from None


ConfigPath = Annotated[Path, BeforeValidator(_not_empty_path), AfterValidator(_home)]

_EXPONENT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")
"""A number with an exponent that YAML 1.1 reads as a string (``1e9``; only ``1.0e+9`` is a float to it)."""


def _whole_number(value: Any) -> Any:
    """``max_request_bytes: 1e8`` or ``object_store_bytes: 2e9`` was refused as 'unable to parse string as an
    integer': YAML 1.1 hands the integer field the string "1e8", which pydantic does not read as a number."""
    value = _not_a_bool(value)
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        number = Decimal(value.strip())  # (the pattern lets only decimal numbers through)
        if number.adjusted() <= 100 and number == number.to_integral_value():  # 1e999999999: no giant int
            return int(number)
    return value


Int = Annotated[int, BeforeValidator(_whole_number)]
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


_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
"""One label of a host name (RFC 1123): what ``socket.bind`` can resolve, unlike a URL or an address with a port."""


DEFAULT_BODY_BUDGET_BYTES = 512 * 1024 * 1024


class ServerConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1, description="Address both servers bind to (an empty one would "
                      "bind every interface: say 0.0.0.0 or :: for that).")
    http_port: Int = Field(8000, ge=0, le=65535, description="OIP HTTP/REST port (0 = pick a free one).")
    grpc_port: Int = Field(8001, ge=0, le=65535, description="OIP gRPC port (0 = pick a free one).")
    max_request_bytes: Int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    max_inflight_body_bytes: Int | None = Field(
        None, ge=1024, description="Bytes of request bodies (HTTP) and messages (gRPC) one gateway process holds "
        "at once, over all its connections (at least max_request_bytes and grpc_max_message_bytes; default: 512 MiB "
        "or the larger of those two); past it a request is refused with 429 and Retry-After (gRPC: "
        "RESOURCE_EXHAUSTED) before it is read or parsed, so that many large requests at once cannot exhaust its "
        "memory."
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

    @field_validator("host")
    @classmethod
    def _bindable(cls, host: str) -> str:
        """An address or a host name, nothing more: ``127.0.0.1:8000`` or ``http://0.0.0.0`` passed the check and
        failed at bind, after the config was called valid (the ports are fields of their own)."""
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        labels = host.removesuffix(".").split(".")
        if len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
            return host  # (an all-digit last label is a mistyped address, 1.2.3.4.5, not a name)
        hint = ("; give the address alone, without a scheme" if "://" in host
                else "; write an IPv6 address without brackets" if host.startswith("[")
                else "; give the port as http_port/grpc_port" if ":" in host else "")
        raise ValueError(f"{host!r} is neither an IP address nor a host name{hint}")

    @model_validator(mode="after")
    def _two_ports(self) -> ServerConfig:
        """One port for both servers passed the check, then failed at listen, after Ray's start-up, as 'in use'."""
        if self.http_port == self.grpc_port != 0:
            raise ValueError(f"http_port and grpc_port are both {self.http_port}: HTTP and gRPC need a port each")
        return self

    @model_validator(mode="after")
    def _one_body_fits(self) -> ServerConfig:
        """A budget below one largest body would refuse such a request with 429 forever, though it is valid."""
        for name in ("max_request_bytes", "grpc_max_message_bytes"):
            if self.max_inflight_body_bytes is not None and self.max_inflight_body_bytes < getattr(self, name):
                raise ValueError(f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) is below {name} "
                                 f"({getattr(self, name)}): a request of the largest size allowed could never be "
                                 "served")
        return self

    @property
    def body_budget_bytes(self) -> int:
        """``max_inflight_body_bytes``, or its default: 512 MiB, or more where one request may be larger."""
        if self.max_inflight_body_bytes is not None:
            return self.max_inflight_body_bytes
        return max(DEFAULT_BODY_BUDGET_BYTES, self.max_request_bytes, self.grpc_max_message_bytes)


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
        # le: each in-flight batch holds an ONNX Runtime call and its buffers on the replica; past a few dozen a
        # replica only queues them, and the batcher, sending whatever is queued at once, stops batching at all.
        2, ge=1, le=64,
        description="Batches in flight per replica, at most 64 (2 overlaps one batch's transfer with another's "
        "compute), shared among the server.workers gateway processes: each batches on its own with its share of "
        "them, rounded down and at least one, so the gateway runs at most this many per replica at once, or one "
        "per process if there are more processes."
    )
    latency_objective_ms: Float | None = Field(
        None,
        gt=0,
        # le: 1e300 passed; a quarter of the objective is how long a partial batch may be held under event-loop
        # pressure, so a request could wait minutes for company, and Retry-After carried a 298-digit number.
        le=60_000,
        description=(
            "Latency objective (p99 target, from decode to answer) of each version of the model, at most a minute; "
            "unset = none. "
            "When set, an adaptive limit on rows queued or running, steered to where 1% of answers miss the "
            "objective, refuses requests with 429 before their body is read, and a partial batch waits for company "
            "no longer than the objective allows (docs/architecture.md). It cuts no request off: a request's own "
            "OIP 'timeout' parameter or gRPC deadline does, objective or not."
        ),
    )
    max_queue_rows: Int = Field(65536, ge=1, description="Most rows waiting per deployment; beyond it, 429.")


class DeploymentConfig(_Strict):
    replicas: Int = Field(
        # le: 1e8 passed the check and left Serve placing replicas until the start-up timeout.
        1, ge=1, le=1024, description="Ray Serve replicas of each model version (at most 1024)."
    )
    num_cpus: Float = Field(
        # ge=0.0001: Ray counts resources in ten-thousandths; a smaller num_cpus passed config check, then
        # serve.deployment raised 'precision ... cannot go beyond 0.0001' after Ray had started.
        0.5, ge=0.0001, description="Ray CPUs reserved per replica (at least 0.0001, Ray's resource unit); "
        "ONNX Runtime threads = max(1, floor(num_cpus)), on a GPU too: they run the nodes CUDA has no kernel "
        "for (on an H100 the wide demo model took 2.6 ms per 16,384 rows with 2 threads, 1.3 ms with 16)."
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
        # Checked here, not on MlgateConfig: there it was reported at '(top level)', the model only in the text.
        if self.champion and self.versions is not None and self.champion not in self.versions:
            raise ValueError(f"champion {self.champion!r} is not in versions {self.versions}")
        return self


class StateConfig(_Strict):
    path: ConfigPath = Field(
        Path(".mlgate/state.db"),
        description="SQLite file holding routing, tokens and the audit log (relative to the config file's folder; "
        "~ is the home folder). "
        "Gateways sharing it share their routing.",
    )
    poll_interval_s: Float = Field(
        # ge=0.01: 1e-9 passed, and every gateway polled SQLite back to back, a core's worth of CPU each.
        0.25, ge=0.01, le=1.0,
        description="How often a gateway checks the state file for changes by other processes (0.01-1 s).",
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
    # ge=1 for both: the evidence is kept and merged in one-second slots. A window_s of 0.001 was read as one
    # slot and shown as asked (the admin API refuses it too); a refresh_s of 1e-9 recomputed the same
    # reports in a loop, a core's worth of CPU, for numbers that change once a second.
    window_s: Float = Field(
        60.0, ge=1, le=900, description="Window of the drift metrics and of 'mlgate drift' by default (1-900 s).")
    refresh_s: Float = Field(5.0, ge=1, le=300, description="How often the drift metrics are recomputed (1-300 s).")


class RolloutControllerConfig(_Strict):
    enabled: bool = Field(
        True, description="Run the rollout controller here. Gateways sharing a state file elect one by lease, so "
        "exactly one acts; turn it off to keep a gateway out of the election.")
    tick_s: Float = Field(  # ge=0.1: 1e-4 passed, and the controller judged every rollout back to back
        1.0, ge=0.1, le=10, description="How often the controller judges every running rollout (0.1-10 s).")
    lease_ttl_s: Float = Field(
        5.0, gt=0, le=60, description="How long the controller's lease lasts unrenewed: another gateway takes over "
        "this long after the holder dies. More than two ticks, or the lease lapses between them.")

    @model_validator(mode="after")
    def _lease_outlives_ticks(self) -> RolloutControllerConfig:
        if self.lease_ttl_s <= 2 * self.tick_s:
            raise ValueError(f"lease_ttl_s ({self.lease_ttl_s:g}) must exceed two ticks (tick_s {self.tick_s:g}): "
                             "the holder renews at ticks, and would lose the lease between them")
        return self


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"(?:[^\s][^\r\n\x00]*)?")  # what the HTTP client (requests) sends


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

    @field_validator("endpoint")
    @classmethod
    def _an_otlp_url(cls, value: str) -> str:
        """The exporter posts to the URL as given and only logs a failure per batch, so each of these passed config
        check and lost every span: ``collector:4318`` (no scheme), ``''`` (the exporter's own localhost default)
        and ``http://collector:4318`` (the collector's root, not its traces path: 404)."""
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL, e.g. http://collector:4318/v1/traces")
        if parts.path in ("", "/"):
            raise ValueError(f"{value!r} has no path: spans are posted to the URL as given, so name the "
                             f"collector's traces path, e.g. {value.rstrip('/')}/v1/traces")
        return value

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, value: dict[str, str]) -> dict[str, str]:
        """A name that is not an HTTP token, or a value with a line break or leading whitespace, made the HTTP
        client refuse every export (logged per batch, spans lost) while config check passed."""
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
            if not _HEADER_VALUE.fullmatch(text):
                raise ValueError(f"{name}: value {text!r} has a line break or leading whitespace")
        return value


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
    repository: ConfigPath = Field(
        Path("models"), description="Model repository root (MODEL/VERSION/model.onnx + manifest.json), relative to "
        "the config file's folder; ~ is the home folder."
    )
    batching: BatchingConfig = BatchingConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    models: dict[str, ModelConfig] = Field(default_factory=dict, description="Per-model overrides, by model name.")
    state: StateConfig = StateConfig()
    auth: AuthConfig = AuthConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    rollouts: RolloutControllerConfig = RolloutControllerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

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

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """YAML 1.1 reads ``010`` as octal 8 and ``1:30`` as base 60 (90): ``http_port: 08000`` stayed 8000 but
        ``http_port: 0700`` bound port 448, silently. YAML 1.2 dropped both; they are refused, with their value."""
        value: int = super().construct_yaml_int(node)
        digits = node.value.replace("_", "").lstrip("+-")
        if ":" in digits or (len(digits) > 1 and digits[0] == "0" and digits[1] not in "bx"):
            raise yaml.constructor.ConstructorError(
                None, None, f"found {node.value}, which YAML 1.1 reads as {value} ("
                f"{'base 60' if ':' in digits else 'octal'}): write {value} if that is meant, or quote it",
                node.start_mark)
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        """``1:30.5`` is a base-60 float to YAML 1.1 (90.5), refused as ``construct_yaml_int`` refuses ``1:30``."""
        value: float = super().construct_yaml_float(node)
        if ":" in node.value:
            raise yaml.constructor.ConstructorError(
                None, None, f"found {node.value}, which YAML 1.1 reads as {value:g} (base 60): write {value:g} "
                "if that is meant, or quote it", node.start_mark)
        return value


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _UniqueKeyLoader.construct_yaml_float)


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
            lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
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
            lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from exc
    if not config.repository.is_absolute():
        config = config.model_copy(update={"repository": (path.parent / config.repository).resolve()})
    if not config.state.path.is_absolute():
        state = config.state.model_copy(update={"path": (path.parent / config.state.path).resolve()})
        config = config.model_copy(update={"state": state})
    return config
