#!/usr/bin/env python3
"""A fraud model from raw transactions to served scores, bit for bit, in one script.

From a fresh clone::

    python3 -m venv .venv && . .venv/bin/activate
    pip install -e ".[cpu,features,export,client]" pandas
    python examples/fraud/run.py                 # 50,000 transactions; --rows 3000 for a quick run

What it does, as a new user would (the shell command of each step is printed as it runs):

1. makes seeded synthetic transactions with missing values in every column type, held as pandas holds
   them: NaN in a float64 column, NA in Float64 / Int64 / boolean / string columns, None in object columns;
2. ``skewless fit`` (features.yaml -> features.json: one float32 tensor ``dense``), ``skewless transform``,
   trains a scikit-learn LogisticRegression on the transformed training rows, ``skewless export`` (model
   folder with config.pbtxt, model.onnx, features.json and validation.json from held-out rows);
3. ``skewless serve`` as a subprocess on free ports of 127.0.0.1, then scores the held-out DataFrame, nulls
   included, with ``skewless.client`` over gRPC and over HTTP, and compares every output with the offline
   one (``FeatureSpec.transform`` + onnxruntime on the exported model.onnx), bit for bit.

Exit status: 0 when every served row equals offline, 1 on any mismatch, 2 on an error, 3 when the server
cannot take missing values (it lists no ``NAME__missing`` inputs: older than issue 24's wire design).
The server is stopped on every exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "features.yaml"
MODEL = "fraud"
LABEL = "is_fraud"
EXIT_OK, EXIT_MISMATCH, EXIT_ERROR, EXIT_NO_NULL_WIRE = 0, 1, 2, 3
READY_PREFIX = "SKEWLESS_READY"  # the line `skewless serve` prints once it listens (with the bound ports)
EXTRAS_HINT = 'pip install -e ".[cpu,features,export,client]" pandas'

COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "MX", "IN", "JP", "NG", "RU", "CN", "PH", "AU"]
COUNTRY_WEIGHTS = [30, 10, 9, 8, 6, 5, 4, 5, 3, 4, 3, 3, 2, 2, 2, 4]
RISKY_COUNTRIES = {"NG", "RU", "PH"}
MERCHANTS = ["grocery", "fuel", "restaurant", "pharmacy", "apparel", "electronics", "travel", "hotel",
             "airline", "digital_goods", "gaming", "gift_cards", "jewelry", "crypto_exchange", "money_transfer",
             "utilities", "telecom", "charity", "subscription", "marketplace"]
MERCHANT_WEIGHTS = [20, 12, 14, 6, 8, 6, 3, 3, 2, 5, 3, 2, 1, 1, 1, 4, 3, 1, 3, 6]
RISKY_MERCHANTS = {"gift_cards", "crypto_exchange", "money_transfer", "jewelry", "digital_goods", "electronics"}


class ExampleError(Exception):
    """A step failed; the message says which and why."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- 1. the data ------------------------------------------------------------------------------------------

def make_transactions(rows: int, seed: int, float_nulls_only: bool = False) -> Any:
    """Seeded synthetic transactions with a fraud label that depends on the raw columns.

    Missing values in every column type, the way pandas holds them: NaN (float64), NA (Float64, Int64,
    boolean, string), None (object). ``float_nulls_only`` keeps the gaps of float columns only, for a
    server that predates the ``NAME__missing`` inputs."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    country = rng.choice(COUNTRIES, rows, p=np.array(COUNTRY_WEIGHTS) / sum(COUNTRY_WEIGHTS))
    merchant = rng.choice(MERCHANTS, rows, p=np.array(MERCHANT_WEIGHTS) / sum(MERCHANT_WEIGHTS))
    # A few values no vocabulary will have seen: they go to the OOV column online and offline alike.
    rare = rng.random(rows) < 0.002
    merchant = np.where(rare, np.char.add("new_mcc_", rng.integers(0, 50, rows).astype(str)), merchant)
    hour = rng.choice(24, rows, p=_hour_weights())
    users = rng.integers(0, max(rows // 10, 50), rows)
    amount = np.round(rng.lognormal(3.4, 1.1, rows), 2)
    device_risk = rng.beta(1.5, 6.0, rows)
    velocity = rng.poisson(1.2, rows).astype(np.float64)
    account_age = rng.gamma(2.0, 300.0, rows).astype(np.int64)
    card_present = rng.random(rows) < 0.55

    logit = (-3.6 + 0.9 * np.log1p(amount / 100.0) + 2.2 * device_risk + 0.35 * velocity
             - 0.6 * np.log1p(account_age / 30.0) + 0.9 * ~card_present
             + 1.3 * np.isin(country, list(RISKY_COUNTRIES)) + 1.1 * np.isin(merchant, list(RISKY_MERCHANTS))
             + 0.8 * ((hour < 6) | (hour >= 22)) + rng.normal(0.0, 0.5, rows))
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    def gaps(p: float) -> np.ndarray:
        return rng.random(rows) < p

    cat_p = 0.0 if float_nulls_only else 1.0  # scales the gaps of the non-float columns
    amount[gaps(0.04)] = np.nan  # float64: NaN
    velocity[gaps(0.08)] = np.nan
    df = pd.DataFrame({
        "amount": amount,
        "merchant_category": pd.array(np.where(gaps(0.03 * cat_p), None, merchant), dtype="string"),  # NA
        "country": pd.Series(np.where(gaps(0.02 * cat_p), None, country), dtype=object),  # None
        "hour": pd.array(np.where(gaps(0.05 * cat_p), None, hour), dtype="Int64"),  # NA
        "user_id": pd.Series(np.where(gaps(0.01 * cat_p), None, np.char.add("u", users.astype(str))),
                             dtype=object),
        "device_risk": pd.array(np.where(gaps(0.10), None, device_risk), dtype="Float64"),  # NA
        "velocity_1h": velocity,
        "account_age_days": pd.array(np.where(gaps(0.06 * cat_p), None, account_age), dtype="Int64"),
        "card_present": pd.array(np.where(gaps(0.04 * cat_p), None, card_present), dtype="boolean"),  # NA
        LABEL: label,
    })
    return df


def _hour_weights() -> np.ndarray:
    w = np.array([1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 9, 10, 9, 8, 8, 8, 9, 10, 10, 8, 6, 4, 2], dtype=np.float64)
    return w / w.sum()


def null_counts(df: Any, columns: Sequence[str]) -> dict[str, int]:
    """Missing values per column as offline transform sees them: pandas NA/None and NaN alike."""
    return {c: int(df[c].isna().sum()) for c in columns}


# ---- 2. fit, transform, train, export ---------------------------------------------------------------------

def cli(*args: str) -> None:
    """Run one ``skewless`` command with this interpreter (progress bars pass through to the terminal)."""
    say(f"$ skewless {shlex.join(args)}")
    cmd = [sys.executable, "-m", "skewless.server.frontend.cli", *args]
    rc = subprocess.run(cmd, check=False).returncode
    if rc != 0:
        raise ExampleError(f"'skewless {args[0]}' exited with status {rc}")


def train(train_features: Path) -> Any:
    """A one-input classifier on exactly the matrix ``skewless transform`` wrote.

    A linear model, because its onnxruntime kernels give each row the same bytes whatever the batch around
    it. Tree ensembles do not (onnxruntime 1.32, more than one intra-op thread): they sum a row's trees in an
    order that depends on the batch's size, so a served score could differ from offline in the last bits.
    The difference comes from onnxruntime, not from the features."""
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    table = pq.read_table(train_features)
    dense = table.column("dense").combine_chunks()
    width = dense.type.list_size
    x = dense.flatten().to_numpy().reshape(-1, width)  # fixed_size_list<float32> -> (rows, width), no copy
    y = table.column(LABEL).to_numpy()
    model = LogisticRegression(max_iter=2000)
    t0 = time.monotonic()
    say(f"training {type(model).__name__} on {x.shape[0]:,} rows x {width} columns ...")
    model.fit(x, y)
    say(f"trained in {time.monotonic() - t0:.1f}s")
    return model


# ---- 3. serve ---------------------------------------------------------------------------------------------

class Server:
    """``skewless serve`` as a subprocess on free ports (port 0: the kernel picks, the server prints them)."""

    def __init__(self, repository: Path, start_timeout: float, extra_args: Sequence[str] = ()) -> None:
        self.repository = repository
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[str] | None = None
        self.grpc_url = self.rest_url = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in stop()

    def start(self) -> Server:
        args = ["serve", "--model-repository", str(self.repository), "--host", "127.0.0.1",
                "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--log-level", "warning",
                *self.extra_args]
        say(f"$ skewless {shlex.join(args)}")
        self.proc = subprocess.Popen([sys.executable, "-m", "skewless.server.frontend.cli", *args],
                                     stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExampleError(f"the server was not ready within {self.start_timeout:.0f}s{self._tail()}")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise ExampleError(f"the server exited with status {self.proc.wait()} before it was ready"
                                   f"{self._tail()}")
            if line.startswith(READY_PREFIX):
                ports = dict(part.split("=", 1) for part in line.split()[1:])
                self.grpc_url, self.rest_url = ports["grpc"], ports["rest"]
                return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _tail(self) -> str:
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip()
        return f"\n--- server log ---\n{text[-4000:]}" if text else ""

    def stop(self) -> None:
        """SIGTERM and wait for a graceful exit; kill after 20 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextmanager
def serving(repository: Path, start_timeout: float, extra_args: Sequence[str] = ()) -> Iterator[Server]:
    server = Server(repository, start_timeout, extra_args)
    try:
        yield server.start()
    finally:
        server.stop()
        say("server stopped")


def wait_model_ready(grpc_url: str, timeout: float, model: str = MODEL) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(client, model):
            if time.monotonic() > deadline:
                raise ExampleError(f"model '{model}' was not ready within {timeout:.0f}s")
            time.sleep(0.2)
    finally:
        client.close()


def _ready(client: Any, model: str) -> bool:
    try:
        return bool(client.is_model_ready(model))
    except Exception:  # noqa: BLE001 - not up yet: tritonclient raises its own exception types
        return False


# ---- scoring and comparing --------------------------------------------------------------------------------

def score(url: str, protocol: str, df: Any, chunk_rows: int, progress: bool) -> tuple[dict[str, np.ndarray], Any]:
    """The served outputs for every row of ``df`` (skewless.client, requests of the model's max_batch_size)."""
    from tqdm import tqdm

    from skewless.client import FeatureClient

    parts: list[dict[str, np.ndarray]] = []
    spec_hashes = set()
    with FeatureClient(url, protocol, concurrency=4) as client, \
            tqdm(total=len(df), unit="rows", unit_scale=True, desc=f"score {protocol}", file=sys.stderr,
                 disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(df), chunk_rows):
            pred = client.predict(MODEL, df.iloc[start:start + chunk_rows])
            parts.append(pred.outputs)
            spec_hashes.add(pred.feature_spec_hash)
            bar.update(pred.rows)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, spec_hashes


def offline(version_dir: Path, df: Any) -> tuple[dict[str, np.ndarray], str]:
    """What the model gives offline: the spec's transform of the raw rows, then onnxruntime on model.onnx."""
    import onnxruntime as ort

    from skewless.native.spec import FeatureSpec

    spec = FeatureSpec.load(version_dir / "features.json")
    tensors = spec.transform(df)
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feeds = {i.name: tensors[i.name] for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, feeds), strict=True)), spec.sha256


def _row_bits(a: np.ndarray) -> np.ndarray:
    """Each row's elements as raw integers, so NaN == NaN and -0.0 != 0.0: equality is of bytes."""
    a = np.ascontiguousarray(a).reshape(len(a), -1)
    if a.dtype.kind == "f":
        a = a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])
    return a


def compare(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> np.ndarray:
    """A bool per row: every output of the row has exactly the offline bytes (and dtype)."""
    n = len(next(iter(expected.values())))
    equal = np.ones(n, dtype=bool)
    for name, want in expected.items():
        got = served.get(name)
        if got is None or len(got) != n or got.dtype != want.dtype or got.size != want.size:
            return np.zeros(n, dtype=bool)
        equal &= (_row_bits(got) == _row_bits(want)).all(axis=1)
    return equal


# ---- the journey ------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, work: Path) -> int:
    try:
        import pandas  # noqa: F401
        from sklearn.metrics import roc_auc_score

        from skewless.client import MissingValuesRefused
    except ImportError as exc:
        raise ExampleError(f"this example needs {exc.name}: {EXTRAS_HINT}") from None

    # 1. data
    say(f"making {args.rows:,} transactions (seed {args.seed}) in {work}")
    df = make_transactions(args.rows, args.seed, args.float_nulls_only)
    n_hold = max(1, int(round(args.rows * args.holdout)))
    train_df, hold_df = df.iloc[:-n_hold].reset_index(drop=True), df.iloc[-n_hold:].reset_index(drop=True)
    train_df.to_parquet(work / "train.parquet", index=False)
    hold_df.to_parquet(work / "holdout.parquet", index=False)
    raw_columns = [c for c in df.columns if c != LABEL]

    # 2. fit, transform, train, export
    spec_path, features_path = work / "features.json", work / "train_features.parquet"
    progress = [] if args.progress else ["--no-progress"]
    cli("fit", "--data", str(work / "train.parquet"), "--config", str(args.config), "--out", str(spec_path))
    cli("transform", "--spec", str(spec_path), "--data", str(work / "train.parquet"),
        "--out", str(features_path), "--keep", LABEL, *progress)
    model = train(features_path)
    import joblib

    joblib.dump(model, work / "model.joblib")
    repo = work / "models"
    cli("export", "--estimator", str(work / "model.joblib"), "--spec", str(spec_path),
        "--data", str(work / "holdout.parquet"), "--out", str(repo / MODEL), "--force")
    version_dir = repo / MODEL / "1"

    # offline reference for the held-out rows
    expected, spec_sha = offline(version_dir, hold_df[raw_columns])
    auc = roc_auc_score(hold_df[LABEL], expected["probabilities"][:, 1]) if hold_df[LABEL].nunique() == 2 else None

    # 3. serve and score over gRPC and HTTP
    results: dict[str, dict[str, int]] = {}
    examples: dict[str, list[int]] = {}
    with serving(repo, args.start_timeout) as server:
        wait_model_ready(server.grpc_url, args.start_timeout)
        assert server.proc is not None
        say(f"serving '{MODEL}': gRPC {server.grpc_url}, HTTP {server.rest_url} (server pid {server.proc.pid})")
        for protocol, url in (("grpc", server.grpc_url), ("http", server.rest_url)):
            try:
                served, hashes = score(url, protocol, hold_df[raw_columns], args.chunk_rows, args.progress)
            except MissingValuesRefused as exc:
                say(f"the server cannot take these missing values: {exc}\n(its wire predates issue 24's "
                    "NAME__missing inputs; --float-nulls-only runs the example with float gaps only)")
                return EXIT_NO_NULL_WIRE
            equal = compare(served, expected)
            if hashes != {spec_sha}:
                say(f"{protocol}: the server computed features with spec {sorted(map(str, hashes))}, not {spec_sha}")
                equal[:] = False
            results[protocol] = {"equal": int(equal.sum()), "mismatch": int((~equal).sum())}
            examples[protocol] = np.flatnonzero(~equal)[:5].tolist()

        nulls = null_counts(hold_df, raw_columns)
        with_nulls = int(hold_df[raw_columns].isna().any(axis=1).sum())
        summary = {"rows": args.rows, "train_rows": len(train_df), "holdout_rows": n_hold,
                   "holdout_rows_with_nulls": with_nulls, "nulls": nulls, "model": type(model).__name__,
                   "holdout_auc": auc, "spec_sha256": spec_sha, "transports": results, "mismatch_rows": examples}
        print_summary(summary, hold_df, raw_columns)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
        if args.keep_serving:
            say(f"keeping the server up (model repository {repo}); Ctrl-C stops it")
            while server.proc.poll() is None:
                time.sleep(0.5)
            raise ExampleError(f"the server exited with status {server.proc.returncode}")
    return EXIT_OK if all(r["mismatch"] == 0 for r in results.values()) else EXIT_MISMATCH


def print_summary(s: dict[str, Any], hold_df: Any, raw_columns: Sequence[str]) -> None:
    print(f"\nrows: {s['rows']:,} ({s['train_rows']:,} to train, {s['holdout_rows']:,} held out and scored; "
          f"{s['holdout_rows_with_nulls']:,} of them with a missing value)")
    print("missing values in the held-out rows:")
    for c in raw_columns:
        print(f"  {c:<18} {str(hold_df[c].dtype):<8} {s['nulls'][c]:>7,}")
    auc = "n/a" if s["holdout_auc"] is None else f"{s['holdout_auc']:.3f}"
    print(f"model: {s['model']}, held-out ROC AUC {auc}; spec {s['spec_sha256'][:16]}")
    print("served vs offline (spec.transform + onnxruntime), bit for bit, per row:")
    for protocol, r in s["transports"].items():
        extra = f"  first mismatching rows: {s['mismatch_rows'][protocol]}" if r["mismatch"] else ""
        print(f"  {protocol:<5} equal {r['equal']:>7,}  mismatch {r['mismatch']:>7,}{extra}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=f"Needs: {EXTRAS_HINT}. Writes into --workdir (default: a temporary "
                                       "directory, removed at the end).")
    p.add_argument("--rows", type=int, default=50_000, help="transactions to make (default 50,000)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of rows held out and scored (default 0.2)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--config", type=Path, default=CONFIG, help="feature config (default: features.yaml here)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the data, spec, model and model folder here")
    p.add_argument("--chunk-rows", type=int, default=2048, help="rows per predict() call (progress granularity)")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for the server")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the summary as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--keep-serving", action="store_true",
                   help="after the summary, keep the server up (try it with curl or tritonclient) until Ctrl-C")
    p.add_argument("--float-nulls-only", action="store_true",
                   help="missing values in float columns only (sent as NaN): for a server without the "
                        "NAME__missing inputs of issue 24")
    args = p.parse_args(argv)
    if args.rows < 20 or not 0.0 < args.holdout < 1.0 or args.chunk_rows < 1:
        p.error("--rows must be >= 20, --holdout in (0, 1), --chunk-rows >= 1")
    return args


def run_in_workdir(run_fn: Any, args: argparse.Namespace, prefix: str) -> int:
    """``run_fn(args, workdir)`` in ``--workdir`` or a temporary folder (removed after), with this example's exit
    statuses: an ExampleError is EXIT_ERROR, Ctrl-C or SIGTERM 130 / 143 after the server is stopped."""
    # SIGTERM unwinds like Ctrl-C, so the server is stopped and the work directory removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            return run_fn(args, args.workdir)
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return run_fn(args, Path(tmp))
    except ExampleError as exc:
        say(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_in_workdir(run, parse_args(argv), "skewless-fraud-")


if __name__ == "__main__":
    sys.exit(main())
