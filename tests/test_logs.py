"""Structured logs: one JSON object per line with the event's fields, tracebacks kept, text mode for terminals."""

from __future__ import annotations

import json
import logging
import time

import pytest

from telemetry.logs import JsonFormatter, setup_logging


def _record(message: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("mlgate", logging.WARNING, __file__, 1, message, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    record.__dict__.update(extra)
    return record


def test_a_line_is_one_json_object_with_the_event_fields() -> None:
    line = JsonFormatter(worker=1).format(_record("rolled back %s", "2", event="rollout_transition", model="m",
                                                  shares={"1": 1.0}))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "rolled back 2" and doc["level"] == "warning" and doc["logger"] == "mlgate"
    assert doc["event"] == "rollout_transition" and doc["model"] == "m" and doc["shares"] == {"1": 1.0}
    assert doc["worker"] == 1
    assert doc["time"].endswith("Z") and doc["time"][10] == "T"


def test_errors_carry_their_exception_and_traceback_and_odd_values_still_serialise() -> None:
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        caught = exc
    doc = json.loads(JsonFormatter().format(_record("failed", exc=caught, path=object())))
    assert doc["error"] == "ValueError: bad input"
    assert "Traceback" in doc["traceback"] and "worker" not in doc
    assert doc["path"].startswith("<object")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_setup_logging_routes_everything_to_one_handler(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(fmt, "info")
        logging.getLogger("some.library").info("hello %d", 7, extra={"event": "x"})
        err = capsys.readouterr().err.strip().splitlines()[-1]
        if fmt == "json":
            assert json.loads(err)["message"] == "hello 7"
        else:
            assert err.endswith("INFO some.library: hello 7")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


@pytest.mark.parametrize("sample", [0.0, 1.0])
def test_access_events_are_sampled_and_carry_request_and_trace_ids(sample: float,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from gateway.registry import ModelRegistry
    from gateway.service import InferenceService

    service = InferenceService(ModelRegistry(), "test", access_log_sample=sample)
    with caplog.at_level(logging.INFO, logger="gateway.service"):
        service.finished("grpc", "no-such-model", None, None, 404, time.perf_counter(), None, "req-7", "ab" * 16)
    access = [r for r in caplog.records if getattr(r, "event", None) == "access"]
    if sample == 0.0:
        assert not access
        return
    (record,) = access
    doc = json.loads(JsonFormatter().format(record))
    assert doc["status"] == 404 and doc["protocol"] == "grpc" and doc["request_id"] == "req-7"
    assert doc["trace_id"] == "ab" * 16 and doc["version"] == "" and doc["duration_s"] >= 0


def test_an_unexpected_error_is_logged_with_the_request_id_the_answer_names(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.registry import ModelRegistry
    from gateway.service import InferenceService

    service = InferenceService(ModelRegistry(), "test")
    with caplog.at_level(logging.ERROR, logger="gateway.service"):
        try:
            raise KeyError("a bug")
        except KeyError:
            answer = service.unexpected("http", "m", None, None)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "request_error"]
    doc = json.loads(JsonFormatter().format(record))
    assert doc["request_id"] in answer.message and len(doc["request_id"]) == 32
    assert answer.http_status == 500 and "KeyError" in doc["error"] and "a bug" not in answer.message
