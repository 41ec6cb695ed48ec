"""``skewless fit``, ``transform``, ``skew-check`` and ``export``: the offline half of the feature core.

``register(subparsers)`` adds the four subcommands to the ``skewless`` argparse parser; each handler
returns the process exit code (0 ok, 1 skew found, 2 bad input).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_SKEW, EXIT_USAGE = 0, 1, 2
# What the `features` extra installs, for the message when one of them is missing.
FEATURES_EXTRA = ("pyarrow", "yaml", "tqdm", "jsonschema")

FIT_DESCRIPTION = """\
Fit a feature config (what to compute) on training data into a frozen spec, features.json (exact
parameters, content hash), which `skewless transform`, the server and `skewless skew-check` all apply
through the same kernel. Fitting the same data twice gives the same bytes."""
FIT_EPILOG = """\
config example (YAML):
  features:
    - {name: amount, impute: median, clip: [0, null], log1p: true, scale: standard, missing_indicator: true}
    - {name: hour, bucketize: {boundaries: [6, 12, 18]}, encode: onehot}
    - {name: country, kind: vocabulary, top_k: 50, oov_buckets: 1}
    - {name: user_id, kind: hash, buckets: 100000, seed: 7}
    - {name: card_txn_1h, kind: aggregate, op: count, keys: card_id, time: ts, window: 1h, log1p: true}

reference: every kind, step and option, their defaults, and what happens to missing, unseen, +-inf and
  out-of-range values: docs/features/spec.md in the source tree (windowed aggregates:
  docs/features/aggregates.md); examples: examples/configs/.
JSON Schema of the config (for editors and CI): skewless fit --print-schema > feature-config.schema.json"""


def _error(cmd: str, exc: BaseException) -> int:
    print(f"skewless {cmd}: error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _needs_features(cmd: str, handler: Any) -> Any:
    """Run ``handler``; a missing module of the ``features`` extra is a one-line error naming the extra."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in FEATURES_EXTRA:
                raise
            return _error(cmd, ImportError(f"needs {exc.name}: pip install 'skewless[features]'"))
    return run


def _progress(total: int | None, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", unit_scale=True, file=sys.stderr, desc=desc,
                disable=not enabled, dynamic_ncols=True)


def _fit(args: argparse.Namespace) -> int:
    if args.print_schema:
        from .config_schema import schema_text

        sys.stdout.write(schema_text())
        return EXIT_OK
    missing = [f"--{k}" for k in ("data", "config", "out") if getattr(args, k) is None]
    if missing:
        return _error("fit", ValueError(f"the following arguments are required: {', '.join(missing)}"))
    from .feature_kernel import FeatureInputError
    from .fileio import data_files, read_table
    from .fit import ConfigError, config_inputs, fit, load_config, validate_config

    try:
        config = load_config(Path(args.config))
        validate_config(config)  # before reading the data: a typo should not wait for a large file
        table = read_table(data_files(args.data), config_inputs(config), config.get("inputs"))
        spec = fit(config, table)
    except (ConfigError, FeatureInputError, FileNotFoundError, KeyError, ValueError, ImportError) as exc:
        return _error("fit", exc)
    spec.save(args.out)
    shapes = ", ".join(f"{t.name}: {t.dtype}[{t.width}]" for t in spec.outputs)
    print(f"fitted {len(spec.features)} features on {table.num_rows} rows -> {args.out} "
          f"(sha256 {spec.sha256[:16]}; {shapes})", file=sys.stderr)
    return EXIT_OK


def _transform(args: argparse.Namespace) -> int:
    from .feature_kernel import FeatureInputError
    from .fileio import (
        NpyWriter,
        ParquetTensorWriter,
        count_rows,
        data_files,
        iter_batches,
        prefetch,
        time_sorted_batches,
    )
    from .spec import FeatureSpec, SpecError

    try:
        spec = FeatureSpec.load(args.spec)
        files = data_files(args.data)
    except (SpecError, FileNotFoundError, OSError) as exc:
        return _error("transform", exc)
    out = Path(args.out)
    threads = args.threads or os.cpu_count() or 1
    keep = list(args.keep)
    derived_keep = [k for k in keep if k in spec.aggregate_names]
    columns = list(dict.fromkeys([*spec.input_names, *(k for k in keep if k not in derived_keep)]))
    types = {t.name: t.dtype for t in spec.inputs}
    # CSV: time inputs keep Arrow's own type, so that ISO timestamps parse as timestamps (converted later).
    csv_types = {k: v for k, v in types.items() if k not in {a["time"] for a in spec.aggregates}}
    if args.order == "time" and not spec.aggregates:
        return _error("transform", ValueError("--order time needs a spec with aggregates"))
    if out.suffix == ".npy":
        if keep:
            return _error("transform", ValueError("--keep needs a .parquet output"))
        tensors = [t for t in spec.outputs if args.tensor in (None, t.name)]
        if not tensors:
            return _error("transform", ValueError(f"no output tensor named {args.tensor!r}"))
        paths = {t.name: out if len(tensors) == 1 else out.with_name(f"{out.stem}.{t.name}.npy")
                 for t in tensors}
        writers: dict[str, Any] = {t.name: NpyWriter(paths[t.name], t.dtype, t.width) for t in tensors}
    elif out.suffix == ".parquet":
        writer = ParquetTensorWriter(out, spec)
    else:
        return _error("transform", ValueError("--out must end in .npy or .parquet"))
    total = count_rows(files)
    rows = 0
    # With aggregates the rows are events in arrival order: one state carries across every batch, so a
    # streamed table gets the same values as one transform of the whole table (docs/features/aggregates.md).
    state = spec.new_aggregate_state() if spec.aggregates else None
    order = TimeOrderWatch(spec.aggregates) if spec.aggregates else None
    try:
        if args.order == "time":
            times = list(dict.fromkeys(a["time"] for a in spec.aggregates))
            if len(times) != 1:
                raise ValueError(f"--order time needs one event-time input; the aggregates read {times}")
            batches = time_sorted_batches(files, columns, args.batch_rows, csv_types, times[0])
        else:
            batches = iter_batches(files, columns, args.batch_rows, csv_types)
        with _progress(total, not args.no_progress, "transform") as bar:
            for batch in prefetch(batches):
                result = spec.allocate(batch.num_rows)
                derived = spec.transform_into(batch, result, n_threads=threads, aggregate_state=state)
                if order is not None:
                    warning = order.check(batch, spec)
                    if warning:
                        bar.write(f"skewless transform: warning: {warning}", file=sys.stderr)
                if out.suffix == ".npy":
                    for name, w in writers.items():
                        w.write(result[name])
                else:
                    writer.write(batch, keep, result, {k: derived[k] for k in derived_keep})
                rows += batch.num_rows
                bar.update(batch.num_rows)
    except (FeatureInputError, KeyError, ValueError) as exc:
        return _error("transform", exc)
    finally:
        if out.suffix == ".npy":
            for w in writers.values():
                w.close()
        else:
            writer.close()
    written = ", ".join(str(p) for p in paths.values()) if out.suffix == ".npy" else str(out)
    late = "" if order is None or not order.back_rows else (
        f"; {order.back_rows} rows went back in time by more than a bucket (use --order time)")
    print(f"transformed {rows} rows with spec {spec.sha256[:16]} -> {written}{late}", file=sys.stderr)
    return EXIT_OK


class TimeOrderWatch:
    """Notices a streamed table going back in time by more than a bucket (late events get dropped)."""

    def __init__(self, aggregates: list[dict[str, Any]]) -> None:
        self.slack: dict[str, int] = {}
        for a in aggregates:
            self.slack[a["time"]] = min(self.slack.get(a["time"], a["bucket"]), a["bucket"])
        self.top: dict[str, int] = {}
        self.back_rows = 0
        self.warned = False

    def check(self, batch: Any, spec: Any) -> str | None:
        """Count the rows earlier than the latest time seen by more than a bucket; a warning the first time."""
        import numpy as np

        from .aggregate_plan import to_time_unit

        units = {a["time"]: a["time_unit"] for a in spec.aggregates}
        for name, slack in self.slack.items():
            col = to_time_unit(batch.column(name), units[name], name).drop_null()
            t = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            if not t.size:
                continue
            prev = self.top.get(name)
            run = np.maximum.accumulate(t if prev is None else np.concatenate([[prev], t]))
            run = run if prev is None else run[1:]
            back = int(np.count_nonzero(run - t > slack))
            self.top[name] = int(run[-1])
            self.back_rows += back
            if back and not self.warned:
                self.warned = True
                return (f"time input {name!r} goes back by more than a bucket ({slack} {units[name]}); events "
                        "older than the longest window behind the newest are dropped as late. Sort the table by "
                        "time (--order time) for a point-in-time backfill")
        return None


def _skew_check(args: argparse.Namespace) -> int:
    from .feature_kernel import FeatureInputError
    from .fileio import count_rows, data_files
    from .skew import skew_check
    from .spec import FeatureSpec, SpecError

    try:
        spec = FeatureSpec.load(args.spec)
        files = data_files(args.log)
        with _progress(count_rows(files), not args.no_progress, "skew-check") as bar:
            report = skew_check(spec, files, max_examples=args.max_examples, n_threads=args.threads,
                                progress=bar.update)
    except (SpecError, FeatureInputError, FileNotFoundError, KeyError, ValueError) as exc:
        return _error("skew-check", exc)
    print(json.dumps(report.to_dict(), indent=1, default=str) if args.json else report.format())
    return EXIT_OK if report.ok else EXIT_SKEW


def _export(args: argparse.Namespace) -> int:
    from .export import EXTRA_HINT, ExportError, export, load_estimator
    from .feature_kernel import FeatureInputError
    from .spec import FeatureSpec, SpecError

    try:
        from .fileio import data_files, read_table
    except ImportError as exc:
        return _error("export", ImportError(f"reading held-out rows needs {exc.name}: {EXTRA_HINT}"))

    try:
        spec = FeatureSpec.load(args.spec)
        estimator = load_estimator(args.estimator)
        types = {t.name: t.dtype for t in spec.inputs}
        table = read_table(data_files(args.data), list(spec.input_names), types)
        result = export(estimator, spec, table, args.out, rows=args.rows, version=args.version,
                        max_batch_size=args.max_batch_size, opset=args.opset, force=args.force)
    except (ExportError, SpecError, FeatureInputError, FileNotFoundError, OSError, KeyError, ValueError) as exc:
        return _error("export", exc)
    agree = "" if result.max_abs_diff is None else f"; |onnx - estimator| <= {result.max_abs_diff:.3g}"
    print(f"exported {Path(args.out).resolve().name}: {result.version_dir}/model.onnx (outputs "
          f"{', '.join(result.outputs)}), features.json, validation.json ({result.rows} rows, "
          f"{result.complete_rows} without missing values){agree}; serve with "
          f"'skewless serve --model-repository {Path(args.out).resolve().parent}'", file=sys.stderr)
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``fit``, ``transform``, ``skew-check`` and ``export`` to the ``skewless`` argparse subparsers."""
    f = subparsers.add_parser("fit", help="fit a feature config on training data into a frozen features.json",
                              description=FIT_DESCRIPTION, epilog=FIT_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--data", help=".parquet/.csv/.arrow file or a directory of them (required)")
    f.add_argument("--config", help="feature config, YAML or JSON (required); checked against the JSON Schema "
                                    "that --print-schema prints")
    f.add_argument("--out", help="where to write the spec, features.json (required)")
    f.add_argument("--print-schema", action="store_true",
                   help="print the feature config's JSON Schema (draft 2020-12) and exit")
    f.set_defaults(func=_needs_features("fit", _fit))

    t = subparsers.add_parser("transform", help="transform data with a frozen spec, streaming by batches")
    t.add_argument("--spec", required=True, help="features.json written by 'skewless fit'")
    t.add_argument("--data", required=True, help=".parquet/.csv/.arrow file or a directory of them")
    t.add_argument("--out", required=True,
                   help="out.npy (one file per output tensor: out.<tensor>.npy when there are several) "
                        "or out.parquet (one fixed_size_list column per tensor)")
    t.add_argument("--tensor", default=None, help="with .npy: write only this output tensor")
    t.add_argument("--keep", action="append", default=[], metavar="COLUMN",
                   help="copy this input column into the .parquet output (repeatable), e.g. a label; an "
                        "aggregate's name keeps its computed (backfilled) values")
    t.add_argument("--batch-rows", type=int, default=1 << 16, help="rows per batch (memory bound)")
    t.add_argument("--order", choices=("table", "time"), default="table",
                   help="aggregates: rows are events in this order. table (default): as stored, streamed; time: "
                        "sorted by event time first (stable; the table must fit in memory)")
    t.add_argument("--threads", type=int, default=0, help="kernel threads (default: all cores)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    t.set_defaults(func=_needs_features("transform", _transform))

    s = subparsers.add_parser("skew-check",
                              help="recompute logged served features and report every mismatching byte")
    s.add_argument("--log", required=True, help="feature log: a .parquet file or a directory of them")
    s.add_argument("--spec", required=True, help="features.json the served features were computed with")
    s.add_argument("--max-examples", type=int, default=10)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_needs_features("skew-check", _skew_check))

    e = subparsers.add_parser("export", help="turn a fitted estimator and a spec into a serving-ready model folder",
                              description="Convert a fitted one-input estimator (scikit-learn estimator or "
                                          "Pipeline, XGBoost, LightGBM; saved with joblib or pickle) to ONNX and "
                                          "write OUT/config.pbtxt, OUT/VERSION/model.onnx, features.json and "
                                          "validation.json (held-out rows and their expected outputs). Needs "
                                          "the export extra: pip install 'skewless[export]'.")
    e.add_argument("--estimator", required=True,
                   help="fitted estimator saved with joblib.dump or pickle (loading runs its code: trusted files "
                        "only)")
    e.add_argument("--spec", required=True, help="features.json the estimator was trained through")
    e.add_argument("--data", required=True,
                   help="held-out raw rows (.parquet/.csv/.arrow or a directory): the first --rows go to "
                        "validation.json")
    e.add_argument("--out", required=True, help="model folder to write; its name is the model's name")
    e.add_argument("--rows", type=int, default=64, help="held-out rows in validation.json (default 64)")
    e.add_argument("--version", type=int, default=1, help="version folder to write (default 1)")
    e.add_argument("--max-batch-size", type=int, default=64, help="config.pbtxt max_batch_size (default 64)")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset of the converted model (default 17)")
    e.add_argument("--force", action="store_true", help="replace an existing version folder")
    e.set_defaults(func=_export)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m skewless.native.cli``) until the server CLI wires these in."""
    parser = argparse.ArgumentParser(prog="skewless", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
