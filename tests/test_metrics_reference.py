"""The metrics reference is generated from the declarations that also create the instruments."""

from __future__ import annotations

from pathlib import Path

from skewless.server.telemetry.catalog import all_metrics, exported_name, metrics_markdown

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "metrics.md"
MARKER = "<!-- generated: skewless.server.telemetry.catalog:metrics_markdown -->"


def test_page_holds_the_generated_reference():
    text = PAGE.read_text()
    assert MARKER in text
    assert text.split(MARKER, 1)[1].strip() == metrics_markdown().strip(), \
        "docs/reference/metrics.md is stale: regenerate it from metrics_markdown()"


def test_every_metric_declared_once_with_its_meaning():
    names = [spec.name for spec in all_metrics()]
    assert len(names) == len(set(names))
    for spec in all_metrics():
        assert spec.description and spec.kind in ("counter", "gauge", "histogram")
    assert exported_name(next(s for s in all_metrics() if s.name == "skewless_alerts")) == "skewless_alerts_total"
    assert exported_name(next(s for s in all_metrics() if s.name == "nv_inference_count")) == "nv_inference_count"


def test_instruments_are_only_created_from_declarations():
    """An instrument created straight on the meter would be missing from the reference."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "server").rglob("*.py")
                 if p.name != "spec.py" and "create_observable_" in p.read_text()]
    assert offenders == []
