"""``skewless drift-report``: feature drift offline, with the online monitor's bins and PSI.

Input is either a served-feature log (the Parquet files ``skewless.feature_log_dir`` collects, or
``skewless transform --keep`` output: one ``fixed_size_list`` column per model tensor, read as served) or a
Parquet/CSV/Arrow file of raw inputs, transformed with the spec first (the ``skewless transform`` path).
Every row counts (no window, no sampling). Output: a table on stdout, optionally JSON and a PNG of the worst
features' bins (reference vs served shares).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .psi import BinShift, Thresholds, psi, shares, top_shifts

if TYPE_CHECKING:
    from skewless.native.spec import FeatureSpec

EXIT_OK, EXIT_DRIFT, EXIT_USAGE = 0, 1, 2


@dataclass
class FeatureDrift:
    name: str
    tensor: str
    psi: float
    level: str
    labels: tuple[str, ...]
    reference: np.ndarray
    served: np.ndarray
    top: list[BinShift]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tensor": self.tensor, "psi": self.psi, "level": self.level,
                "top_bins": [b.to_dict() for b in self.top],
                "bins": [{"bin": label, "reference": int(r), "served": int(s)}
                         for label, r, s in zip(self.labels, self.reference, self.served, strict=True)]}


@dataclass
class DriftReport:
    spec_sha256: str
    thresholds: Thresholds
    rows: int = 0
    features: list[FeatureDrift] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def worst(self, k: int | None = None) -> list[FeatureDrift]:
        ranked = sorted(self.features, key=lambda f: (-(f.psi if f.psi == f.psi else -1.0), f.name))
        return ranked if k is None else ranked[:k]

    def to_dict(self) -> dict[str, Any]:
        return {"spec_sha256": self.spec_sha256, "rows": self.rows,
                "thresholds": {"warn": self.thresholds.warn, "alert": self.thresholds.alert},
                "features": [f.to_dict() for f in self.worst()], "skipped": self.skipped,
                "warnings": self.warnings}

    def format(self) -> str:
        lines = [f"rows: {self.rows}   spec: {self.spec_sha256[:12]}   thresholds: warn {self.thresholds.warn:g}, "
                 f"alert {self.thresholds.alert:g}"]
        lines += [f"warning: {w}" for w in self.warnings]
        width = max([len(f.name) for f in self.features] + [7])
        lines.append(f"{'feature':<{width}}  {'psi':>8}  {'level':<5}  top bin")
        for f in self.worst():
            top = str(f.top[0]) if f.top else ""
            lines.append(f"{f.name:<{width}}  {f.psi:8.4f}  {f.level:<5}  {top}")
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def drift_report(spec: FeatureSpec, tensors: Iterable[dict[str, np.ndarray]],
                 thresholds: Thresholds | None = None, progress: Callable[[int], None] | None = None
                 ) -> DriftReport:
    """PSI of every comparable feature over all rows of ``tensors`` (batches of model tensors by name)."""
    from .reference import feature_bins

    thresholds = thresholds or Thresholds()
    bins, skipped = feature_bins(spec)
    report = DriftReport(spec.sha256, thresholds, skipped=skipped)
    counts = [np.zeros(b.n_bins, dtype=np.int64) for b in bins]
    for batch in tensors:
        n = next(iter(batch.values())).shape[0]
        for c, b in zip(counts, bins, strict=True):
            c += b.count(batch[b.tensor])
        report.rows += n
        if progress is not None:
            progress(n)
    for c, b in zip(counts, bins, strict=True):
        value = psi(b.reference, c)
        report.features.append(FeatureDrift(b.name, b.tensor, value, thresholds.level(value), b.labels,
                                            b.reference, c, top_shifts(b.labels, b.reference, c, 3)))
    return report


def log_tensors(spec: FeatureSpec, files: list[Path], batch_rows: int, warnings: list[str]
                ) -> Iterator[dict[str, np.ndarray]]:
    """The served tensors of a feature log, batch by batch (a spec hash mismatch becomes a warning)."""
    import pyarrow.parquet as pq

    from skewless.native.fileio import SPEC_HASH_KEY, iter_batches, tensor_from_column

    for f in files:
        if f.suffix == ".parquet":
            meta = pq.read_schema(f).metadata or {}
            logged = meta.get(SPEC_HASH_KEY, b"").decode()
            if logged and logged != spec.sha256:
                warnings.append(f"{f.name} was written with spec {logged[:12]}, compared with {spec.sha256[:12]}")
        for batch in iter_batches([f], list(spec.output_names), batch_rows):
            yield {t.name: tensor_from_column(batch.column(t.name), t.dtype, t.width) for t in spec.outputs}


def raw_tensors(spec: FeatureSpec, files: list[Path], batch_rows: int, n_threads: int | None
                ) -> Iterator[dict[str, np.ndarray]]:
    """Raw input files transformed with the spec, batch by batch (``skewless transform``'s reading path)."""
    from skewless.native.fileio import iter_batches, prefetch

    types = {t.name: t.dtype for t in spec.inputs}
    for batch in prefetch(iter_batches(files, list(spec.input_names), batch_rows, types)):
        yield spec.transform(batch, n_threads=n_threads)


def plot(report: DriftReport, path: str | Path, top: int) -> None:
    """A PNG with one panel per worst feature: reference vs served share of each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worst = report.worst(top)
    fig, axes = plt.subplots(max(1, len(worst)), 1, figsize=(10, 2.8 * max(1, len(worst))), squeeze=False)
    for ax, f in zip(axes[:, 0], worst, strict=False):
        x = np.arange(len(f.labels))
        ax.bar(x - 0.2, shares(f.reference), 0.4, label="reference")
        ax.bar(x + 0.2, shares(f.served), 0.4, label="served")
        ax.set_xticks(x, [label[:18] for label in f.labels], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("share of rows")
        ax.set_title(f"{f.name}: PSI {f.psi:.3f} ({f.level})", fontsize=10)
        ax.legend(fontsize=8)
    if not worst:
        axes[0, 0].set_title("no comparable features")
    fig.suptitle(f"drift vs reference, {report.rows} rows (spec {report.spec_sha256[:12]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    from skewless.native.cli import _progress
    from skewless.native.feature_kernel import FeatureInputError
    from skewless.native.fileio import count_rows, data_files
    from skewless.native.spec import FeatureSpec, SpecError

    def fail(exc: BaseException) -> int:
        print(f"skewless drift-report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if not 0 < args.warn < args.alert:
        return fail(ValueError("thresholds must satisfy 0 < --warn < --alert"))
    if args.png:
        try:  # checked before the log is read: the plot is the last step
            import matplotlib  # noqa: F401
        except ImportError:
            return fail(ImportError("--png needs matplotlib: pip install 'skewless[report]'"))
    thresholds = Thresholds(args.warn, args.alert)
    warnings: list[str] = []
    try:
        spec = FeatureSpec.load(args.spec)
        files = data_files(args.log or args.data)
        batches = (log_tensors(spec, files, args.batch_rows, warnings) if args.log
                   else raw_tensors(spec, files, args.batch_rows, args.threads))
        with _progress(count_rows(files), not args.no_progress, "drift-report") as bar:
            report = drift_report(spec, batches, thresholds, progress=bar.update)
    except (SpecError, FeatureInputError, FileNotFoundError, KeyError, ValueError, OSError) as exc:
        return fail(exc)
    report.warnings = warnings
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if args.png:
        plot(report, args.png, args.top)
    levels = {f.level for f in report.features}
    failing = {"alert": {"alert"}, "warn": {"warn", "alert"}, "never": set()}[args.fail_on]
    return EXIT_DRIFT if levels & failing else EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``drift-report`` to the ``skewless`` argparse subparsers."""
    p = subparsers.add_parser("drift-report",
                              help="feature drift (PSI vs the spec's reference statistics) of a feature log or data")
    p.add_argument("--spec", required=True, help="features.json with reference statistics (skewless fit)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", help="served-feature log: a .parquet file or a directory of them")
    src.add_argument("--data", help="raw inputs: a .parquet/.csv/.arrow file or a directory of them")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--png", metavar="OUT", help="also plot the worst features' bins (reference vs served)")
    p.add_argument("--top", type=int, default=6, help="features in the PNG (default 6)")
    p.add_argument("--warn", type=float, default=0.1, help="PSI warn threshold (default 0.1)")
    p.add_argument("--alert", type=float, default=0.25, help="PSI alert threshold (default 0.25)")
    p.add_argument("--fail-on", choices=["never", "warn", "alert"], default="never",
                   help="exit 1 when a feature reaches this level (default: never)")
    p.add_argument("--batch-rows", type=int, default=1 << 16, help="rows per batch (memory bound)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads for --data")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_run)
