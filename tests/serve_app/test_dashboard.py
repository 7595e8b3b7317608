"""The Grafana dashboard only charts metrics the code really exports (Ray adds the `ray_` prefix, and
Prometheus the `_total` suffix of counters and the `_bucket/_sum/_count` series of histograms)."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dashboard_queries_name_exported_metrics():
    dashboard = json.loads((REPO / "configs" / "grafana" / "orfeas-dashboard.json").read_text())
    sources = "".join(p.read_text() for p in [REPO / "deployments" / "metrics.py", REPO / "serve_app" / "metrics.py"])
    exported = set(re.findall(r'"(orfeas_[a-z_]+)"', sources))
    referenced = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            referenced |= {
                re.sub(r"_(bucket|sum|count|total)$", "", m)
                for m in re.findall(r"ray_(orfeas_[a-z_]+)", target["expr"])
            }
    assert referenced and referenced <= exported, referenced - exported
    assert exported <= referenced, f"exported but not charted: {exported - referenced}"
