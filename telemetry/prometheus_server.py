"""A real Prometheus server (Debian package ``prometheus``) scraping a gateway, with mlgate's rules loaded.

Used by the end-to-end telemetry test and by ``mlgate observe`` (``make observe``): both need the same
thing — a generated config, a private data folder, a loopback port, and the HTTP API to query.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

RULES_FILE = Path(__file__).resolve().parent / "prometheus" / "mlgate-rules.yml"


class PrometheusError(Exception):
    """Prometheus is missing, did not start, or answered a query with an error."""


def find_prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("the 'prometheus' binary is not installed: apt-get install prometheus "
                              "(Debian/Ubuntu package; `make test` and `make observe` install it)")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def scrape_config(targets: list[str], scrape_interval_s: float, rules: list[Path]) -> dict[str, Any]:
    interval = f"{int(scrape_interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rules],
        "scrape_configs": [{"job_name": "mlgate", "metrics_path": "/metrics",
                            "static_configs": [{"targets": targets}]}],
    }


class PrometheusServer:
    """One Prometheus process; ``stop()`` (or leaving the ``with`` block) ends it and removes its data."""

    def __init__(self, targets: list[str], scrape_interval_s: float = 1.0, rules: list[Path] | None = None,
                 port: int = 0, host: str = "127.0.0.1", retention: str = "2h") -> None:
        self.binary = find_prometheus()
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self._folder = Path(tempfile.mkdtemp(prefix="mlgate-prometheus-"))
        self.config_path = self._folder / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(
            scrape_config(targets, scrape_interval_s, [RULES_FILE] if rules is None else rules)))
        self.log_path = self._folder / "prometheus.log"
        self._args = [self.binary, f"--config.file={self.config_path}",
                      f"--storage.tsdb.path={self._folder / 'data'}", f"--storage.tsdb.retention.time={retention}",
                      f"--web.listen-address={host}:{self.port}", "--log.level=warn"]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> PrometheusServer:
        """Start it and wait until it is ready; on failure nothing is left running or on disk."""
        try:
            with self.log_path.open("wb") as log:
                self._process = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT)
            self._wait_ready(self._process, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/{path}``; the ``data`` of a successful answer, PrometheusError otherwise."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                doc = json.load(response)
        except urllib.error.HTTPError as exc:
            doc = json.load(exc)
        if doc.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or scalar as a one-element list)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
