"""Prometheus rules for mlgate: a generator (``slo_rules``), the rules it wrote, and readers of them (``rules``).

The rule file ``mlgate-rules.yml`` next to this module is generated, committed and unit-tested with
``promtool test rules`` (``tests/*.yml``); see ``README.md`` here.
"""
