"""Structured logs: one JSON object per line, so a log pipeline indexes fields instead of parsing prose.

Every line has ``time`` (UTC ISO-8601, milliseconds), ``level``, ``logger`` and ``message``; a notable
event adds ``event`` (startup, model_ready, model_unavailable, routing_changed, rollout_transition,
request_error, access, ...) and its fields, passed as ``extra={"event": ..., ...}`` so the text and the
fields never disagree. Errors carry ``error`` (the exception, one line) and ``traceback``.
``worker`` says which gateway process wrote the line when there are several.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}
"""Attributes every record has (and uvicorn's ANSI-coloured copy of the message): anything else is an extra."""


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            doc["worker"] = self._worker
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            doc["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            doc["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def setup_logging(fmt: str, level: str, worker: int | None = None) -> None:
    """Route every logger (ours, Ray's, uvicorn's) to stderr in ``fmt`` ("json" or "text")."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        logging.Formatter.converter = time.gmtime
        prefix = f"[worker {worker}] " if worker is not None else ""
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: {prefix}%(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
