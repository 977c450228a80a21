"""The metrics catalogue: docs/metrics.md matches the code, and every metric follows the naming conventions."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from telemetry import catalogue, metrics

BASE_UNIT_SUFFIXES = ("_seconds", "_rows", "_ratio", "_psi", "_percent", "_divergence", "_info", "_state", "_total")


def test_docs_metrics_md_is_generated_from_the_registry() -> None:
    assert catalogue.DOC_PATH.read_text(encoding="utf-8") == catalogue.render(), (
        "docs/metrics.md is stale: run `python -m telemetry.catalogue --write`")


def test_every_metric_is_documented_once_with_a_meaning() -> None:
    docs = catalogue.documented()
    names = [d.name for d in docs]
    assert len(names) == len(set(names))
    assert {"mlgate_requests_total", "mlgate_request_duration_seconds", "mlgate_model_state",
            "mlgate_build_info", "mlgate_fallbacks_total", "mlgate_drift_feature_psi",
            "mlgate_rollout_state"} <= set(names)
    for doc in docs:
        assert len(doc.meaning) > 20, doc.name


def test_names_follow_prometheus_conventions() -> None:
    for doc in catalogue.documented():
        assert re.fullmatch(r"mlgate_[a-z0-9_]+", doc.name), doc.name
        assert (doc.type == "counter") == doc.name.endswith("_total"), doc.name
        assert not re.search(r"_(ms|milliseconds|us|microseconds|minutes)(_|$)", doc.name), doc.name
        if doc.type == "histogram":
            assert doc.name.endswith(("_seconds", "_rows")), doc.name
        assert "le" not in doc.labels and "quantile" not in doc.labels


def test_request_buckets_cover_sub_millisecond_to_seconds() -> None:
    buckets = metrics.REQUEST_BUCKETS
    assert list(buckets) == sorted(buckets)
    assert buckets[0] <= 0.0001 and buckets[-1] >= 5.0
    assert sum(0.001 <= b <= 0.1 for b in buckets) >= 8  # dense where latency objectives sit


def test_unknown_model_names_never_become_label_values() -> None:
    recorder = metrics.RequestMetrics(lambda model: model == "known")
    for i in range(50):
        recorder.observe(f"attacker-{i}", "", "", "http", 404, 0.001)
    recorder.observe("known", "1", "champion", "grpc", 200, 0.002)
    samples = {tuple(sorted(sample.labels.items())): sample.value
               for family in text_string_to_metric_families(metrics.exposition()[0].decode())
               if family.name == "mlgate_requests" for sample in family.samples}
    assert not any("attacker-" in value for labels in samples for _, value in labels)
    unknown = (("model", ""), ("protocol", "http"), ("status", "404"), ("variant", ""), ("version", ""))
    known = (("model", "known"), ("protocol", "grpc"), ("status", "200"), ("variant", "champion"), ("version", "1"))
    assert samples[unknown] >= 50 and samples[known] >= 1
