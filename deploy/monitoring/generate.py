"""Generates mlgate's Grafana dashboard and the PrometheusRule of its alerting rules.

    python deploy/monitoring/generate.py          # writes mlgate-dashboard.json and
                                                  # prometheus-rule.yaml beside it
    python deploy/monitoring/generate.py --check  # exit 1 if either is not what it writes

The dashboard is plain Grafana JSON built from the panel list below (one row of panels per
concern); the PrometheusRule wraps alerts.rules.yml, the one place the rules are written.
Every metric a query names is one the gateway exports (tests/integration pins it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "alerts.rules.yml"
DASHBOARD = HERE / "mlgate-dashboard.json"
PROMETHEUS_RULE = HERE / "prometheus-rule.yaml"

SEL = 'model=~"$model"'
RATE = "$__rate_interval"

Panel = tuple[str, str, list[tuple[str, str]]]  # title, unit, [(expr, legend)]


def quantiles(metric: str, by: str, where: str = SEL) -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, per `by`."""
    rate = f"rate({metric}_bucket{{{where}}}[{RATE}])"
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) ({rate}))",
            f"p{round(q * 100)} {{{{{by.replace(', ', '}} {{')}}}}}",
        )
        for q in (0.5, 0.99)
    ]


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Traffic",
        [
            (
                "Request rate by outcome",
                "reqps",
                [
                    (
                        f"sum by (model, outcome) (rate(mlgate_requests_total{{{SEL}}}[{RATE}]))",
                        "{{model}} {{outcome}}",
                    )
                ],
            ),
            (
                "Errors by outcome (error class; its status: see README)",
                "reqps",
                [
                    (
                        "sum by (model, outcome) (rate(mlgate_requests_total"
                        f'{{{SEL},outcome!~"ok|cancelled"}}[{RATE}]))',
                        "{{model}} {{outcome}}",
                    )
                ],
            ),
            (
                "Request latency p50 / p99",
                "s",
                quantiles("mlgate_request_duration_seconds", "model", f'{SEL},outcome="ok"'),
            ),
        ],
    ),
    (
        "Batching and features",
        [
            (
                "Queue wait p50 / p99",
                "s",
                quantiles("mlgate_queue_wait_seconds", "model, version"),
            ),
            (
                "Rows per batch (mean)",
                "short",
                [
                    (
                        f"sum by (model, version) (rate(mlgate_batch_size_sum{{{SEL}}}[{RATE}]))"
                        " / sum by (model, version) "
                        f"(rate(mlgate_batch_size_count{{{SEL}}}[{RATE}]))",
                        "{{model}} v{{version}}",
                    )
                ],
            ),
            (
                "Feature fetch latency p50 / p99",
                "s",
                quantiles("mlgate_feature_fetch_duration_seconds", "store", ""),
            ),
            (
                "Feature rows by status",
                "percentunit",
                [
                    (
                        f"sum by (view, status) (rate(mlgate_feature_rows_total[{RATE}]))"
                        f" / ignoring (status) group_left sum by (view) "
                        f"(rate(mlgate_feature_rows_total[{RATE}]))",
                        "{{view}} {{status}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Rollout",
        [
            (
                "Predictions by version and route",
                "reqps",
                [
                    (
                        "sum by (model, version, route) "
                        f"(rate(mlgate_routed_total{{{SEL}}}[{RATE}]))",
                        "{{model}} v{{version}} {{route}}",
                    )
                ],
            ),
            (
                "Canary weight and rollbacks",
                "short",
                [
                    (
                        f"max by (model, version) (mlgate_canary_weight{{{SEL}}})",
                        "weight v{{version}}",
                    ),
                    (
                        f"sum by (model, version, reason) (mlgate_rollbacks_total{{{SEL}}})",
                        "rollbacks v{{version}} {{reason}}",
                    ),
                ],
            ),
            (
                "Guard flag rate",
                "percentunit",
                [
                    (
                        f"max by (model, version) (mlgate_guard_flag_rate{{{SEL}}})",
                        "{{model}} v{{version}}",
                    )
                ],
            ),
            (
                "Shadow disagreement",
                "percentunit",
                [
                    (
                        "sum by (model, baseline, version) (rate(mlgate_shadow_rows_total"
                        f'{{{SEL},outcome="disagree"}}[{RATE}]))'
                        " / sum by (model, baseline, version) "
                        f"(rate(mlgate_shadow_rows_total{{{SEL}}}[{RATE}]))",
                        "{{model}} v{{version}} vs v{{baseline}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Drift and quality",
        [
            (
                "Drift score / threshold by feature (above 1: alarm)",
                "short",
                [
                    (
                        f"max by (model, version, feature, kind) (mlgate_drift_score{{{SEL}}})"
                        " / max by (model, version, feature, kind) "
                        f"(mlgate_drift_threshold{{{SEL}}})",
                        "{{model}} v{{version}} {{kind}} {{feature}}",
                    )
                ],
            ),
            (
                "Drift alarms and window rows",
                "short",
                [
                    (
                        f"sum by (model, version, kind) (mlgate_drift_alarm{{{SEL}}})",
                        "alarms {{model}} v{{version}} {{kind}}",
                    ),
                    (
                        f"max by (model, version) (mlgate_drift_window_rows{{{SEL}}})",
                        "rows {{model}} v{{version}}",
                    ),
                    (
                        f"max by (model, version, hash) (mlgate_drift_reference_info{{{SEL}}})",
                        "reference {{model}} v{{version}} {{hash}}",
                    ),
                ],
            ),
            (
                "Realised quality (label feedback)",
                "short",
                [
                    (
                        f"max by (model, version, metric) (mlgate_model_quality{{{SEL}}})",
                        "{{model}} v{{version}} {{metric}}",
                    )
                ],
            ),
            (
                "Labels: window size and outcomes",
                "short",
                [
                    (
                        f"max by (model, version) (mlgate_model_quality_window_labels{{{SEL}}})",
                        "in window {{model}} v{{version}}",
                    ),
                    (
                        "sum by (model, outcome) (rate(mlgate_feedback_labels_total"
                        f"{{{SEL}}}[{RATE}]))",
                        "{{model}} {{outcome}} /s",
                    ),
                ],
            ),
        ],
    ),
    (
        "Audit log",
        [
            (
                "Audit lag (oldest unwritten record)",
                "s",
                [("max by (instance) (mlgate_audit_lag_seconds)", "{{instance}}")],
            ),
            (
                "Audit queue bytes",
                "bytes",
                [("sum by (instance) (mlgate_audit_queue_bytes)", "{{instance}}")],
            ),
            (
                "Audit records: written, spilled, drained, dropped",
                "short",
                [
                    (
                        f"sum by (outcome) (rate(mlgate_audit_records_total[{RATE}]))",
                        "{{outcome}}",
                    )
                ],
            ),
        ],
    ),
]


def dashboard() -> dict[str, Any]:
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels: list[dict[str, Any]] = []
    y = 0
    for title, row in ROWS:
        panels.append(
            {
                "type": "row",
                "id": len(panels) + 1,
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        width = 24 // len(row)
        for i, (name, unit, queries) in enumerate(row):
            panels.append(
                {
                    "type": "timeseries",
                    "id": len(panels) + 1,
                    "title": name,
                    "datasource": datasource,
                    "gridPos": {"h": 8, "w": width, "x": i * width, "y": y},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {
                            "refId": chr(ord("A") + j),
                            "datasource": datasource,
                            "expr": expr,
                            "legendFormat": legend,
                        }
                        for j, (expr, legend) in enumerate(queries)
                    ],
                }
            )
        y += 8
    return {
        "uid": "mlgate",
        "title": "mlgate",
        "tags": ["mlgate"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {
                    "name": "model",
                    "type": "query",
                    "datasource": datasource,
                    "query": "label_values(mlgate_requests_total, model)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "mlgate",
            # The Prometheus Operator's default ruleSelector picks rules by a release label.
            "labels": {"app.kubernetes.io/name": "mlgate", "release": "prometheus"},
        },
        "spec": yaml.safe_load(RULES.read_text()),
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the rules' expressions) as literal blocks, as in alerts.rules.yml."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def rendered() -> dict[Path, str]:
    header = "# Generated by deploy/monitoring/generate.py from alerts.rules.yml: do not edit.\n"
    return {
        DASHBOARD: json.dumps(dashboard(), indent=2) + "\n",
        PROMETHEUS_RULE: header
        + yaml.dump(prometheus_rule(), Dumper=_Dumper, sort_keys=False, width=100),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python deploy/monitoring/generate.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
