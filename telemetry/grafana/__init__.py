"""Grafana dashboards for mlgate, as code: JSON in ``dashboards/``, provisioning in ``provisioning/``.

``dashboards.panel_queries()`` lists every panel query with Grafana's variables filled in, so tests can
check the queries statically and evaluate them against a real Prometheus; see ``README.md`` here.
"""
