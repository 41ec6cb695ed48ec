"""``skewless fit / transform / skew-check`` through ``skewless.native.cli.register`` on real files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skewless.native.cli import register
from skewless.native.config_schema import schema
from skewless.native.fileio import SPEC_HASH_KEY, tensor_array
from skewless.native.fit import fit
from skewless.native.spec import FeatureSpec, content_hash

CONFIG_YAML = """
features:
  - {name: age, impute: median, clip: [0, 100], scale: standard, missing_indicator: true}
  - {name: income, steps: [{impute: 0}, log1p, minmax]}
  - {name: age_b, input: age, bucketize: {quantiles: 4}, encode: onehot}
  - {name: country, kind: vocabulary, top_k: 3, encode: onehot}
  - {name: user, kind: hash, buckets: 50, seed: 7}
  - {name: cxd, kind: cross, inputs: [country, device], buckets: 100}
  - {name: n_items, kind: passthrough, output: ids}
  - {name: member}
"""


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="skewless")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(5)
    n = 5000
    age = rng.normal(40, 12, n)
    age[rng.random(n) < 0.1] = np.nan
    table = pa.table({
        "age": age, "income": rng.lognormal(10, 1, n),
        "country": pa.array(rng.choice(["US", "DE", "FR", "JP", "é"], n).tolist()),
        "device": pa.array([None if i % 50 == 0 else ("ios" if i % 3 else "android") for i in range(n)]),
        "user": pa.array([f"u{i % 333}" for i in range(n)]),
        "n_items": rng.integers(0, 10, n), "member": rng.random(n) < 0.3, "label": rng.random(n),
        "request_id": pa.array([f"req-{i}" for i in range(n)]),
    })
    pq.write_table(table, d / "train.parquet", row_group_size=700)
    (d / "features.yaml").write_text(CONFIG_YAML)
    assert run_cli("fit", "--data", str(d / "train.parquet"), "--config", str(d / "features.yaml"),
                   "--out", str(d / "features.json")) == 0
    return d, table


def test_fit_writes_a_loadable_spec(files):
    d, table = files
    spec = FeatureSpec.load(d / "features.json")
    assert spec.input_names == ("age", "income", "country", "user", "device", "n_items", "member")
    assert spec.to_dict()["fit"]["rows"] == table.num_rows


def test_transform_npy_streams_in_batches_and_matches_the_api(files, tmp_path):
    d, table = files
    spec = FeatureSpec.load(d / "features.json")
    expected = spec.transform(table)
    out = tmp_path / "out.npy"
    assert run_cli("transform", "--spec", str(d / "features.json"), "--data", str(d / "train.parquet"),
                   "--out", str(out), "--batch-rows", "333", "--threads", "3", "--no-progress") == 0
    for name in spec.output_names:
        got = np.load(tmp_path / f"out.{name}.npy")
        assert got.dtype == expected[name].dtype and got.tobytes() == expected[name].tobytes()
    assert run_cli("transform", "--spec", str(d / "features.json"), "--data", str(d / "train.parquet"),
                   "--out", str(tmp_path / "dense.npy"), "--tensor", "dense", "--no-progress") == 0
    assert np.load(tmp_path / "dense.npy").tobytes() == expected["dense"].tobytes()


def test_transform_parquet_keeps_columns_and_tensors(files, tmp_path):
    d, table = files
    spec = FeatureSpec.load(d / "features.json")
    out = tmp_path / "out.parquet"
    assert run_cli("transform", "--spec", str(d / "features.json"), "--data", str(d / "train.parquet"),
                   "--out", str(out), "--keep", "label", "--batch-rows", "1000", "--no-progress") == 0
    result = pq.read_table(out)
    assert result.column_names == ["label", "dense", "ids"]
    assert result.schema.metadata[b"skewless.spec_sha256"] == spec.sha256.encode()
    dense = np.stack(result.column("dense").to_pylist()).astype(np.float32)
    assert dense.tobytes() == spec.transform(table)["dense"].tobytes()


def test_transform_csv_input(files, tmp_path):
    import pyarrow.csv as pacsv

    d, table = files
    spec = FeatureSpec.load(d / "features.json")
    small = table.slice(0, 300)
    pacsv.write_csv(small, tmp_path / "in.csv")
    assert run_cli("transform", "--spec", str(d / "features.json"), "--data", str(tmp_path / "in.csv"),
                   "--out", str(tmp_path / "out.npy"), "--tensor", "ids", "--no-progress") == 0
    # CSV text cannot carry a distinct null string, so compare on the columns where that does not matter
    assert np.array_equal(np.load(tmp_path / "out.npy"), spec.transform(small)["ids"])


def _write_log(path, table, spec, outputs, binary=False):
    cols = {name: table.column(name) for name in spec.input_names}
    cols["request_id"] = table.column("request_id")
    for t in spec.outputs:
        block = outputs[t.name]
        cols[t.name] = (pa.array([r.tobytes() for r in block], pa.binary()) if binary
                        else tensor_array(block))
    pq.write_table(pa.table(cols), path)


def test_skew_check_clean_log_passes(files, tmp_path, capsys):
    d, table = files
    spec = FeatureSpec.load(d / "features.json")
    log = tmp_path / "log"
    log.mkdir()
    out = spec.transform(table)
    _write_log(log / "part-0.parquet", table.slice(0, 2000), spec, {k: v[:2000] for k, v in out.items()})
    _write_log(log / "part-1.parquet", table.slice(2000), spec, {k: v[2000:] for k, v in out.items()}, binary=True)
    assert run_cli("skew-check", "--log", str(log), "--spec", str(d / "features.json"), "--no-progress") == 0
    assert "rows compared: 5000" in capsys.readouterr().out


def test_skew_check_finds_a_planted_skew(files, tmp_path, capsys):
    d, table = files
    spec = FeatureSpec.load(d / "features.json")
    log = tmp_path / "log.parquet"
    _write_log(log, table, spec, spec.transform(table))
    doc = spec.to_dict()
    income = next(f for f in doc["features"] if f["name"] == "income")
    income["steps"][2]["range"] = (float.fromhex(income["steps"][2]["range"]) * (1 + 1e-5)).hex()  # a small drift, far above float32 resolution
    doc["sha256"] = content_hash(doc)
    skewed = tmp_path / "skewed.json"
    skewed.write_text(json.dumps(doc))
    assert run_cli("skew-check", "--log", str(log), "--spec", str(skewed), "--json", "--no-progress") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["rows"] == table.num_rows
    assert set(report["per_feature"]) == {"income"} and report["mismatched_rows"] > 0
    ex = report["examples"][0]
    assert ex["feature"] == "income" and ex["column"] == "income" and ex["request_id"].startswith("req-")
    assert any("written with spec" in w for w in report["warnings"]) is False  # hand-made log has no hash


def test_errors_exit_2_with_a_message(files, tmp_path, capsys):
    d, _ = files
    (tmp_path / "bad.yaml").write_text("features:\n  - {name: age, impute: sometimes}\n")
    assert run_cli("fit", "--data", str(d / "train.parquet"), "--config", str(tmp_path / "bad.yaml"),
                   "--out", str(tmp_path / "x.json")) == 2
    assert "impute" in capsys.readouterr().err
    assert run_cli("transform", "--spec", str(d / "features.json"), "--data", str(d / "train.parquet"),
                   "--out", str(tmp_path / "x.txt")) == 2
    tampered = json.loads((d / "features.json").read_text())
    tampered["fit"]["rows"] += 1
    (tmp_path / "t.json").write_text(json.dumps(tampered))
    assert run_cli("transform", "--spec", str(tmp_path / "t.json"), "--data", str(d / "train.parquet"),
                   "--out", str(tmp_path / "x.npy")) == 2
    assert "hash mismatch" in capsys.readouterr().err


def test_empty_input_writes_empty_outputs(files, tmp_path):
    d, table = files
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    assert run_cli("transform", "--spec", str(d / "features.json"), "--data", str(tmp_path / "empty.parquet"),
                   "--out", str(tmp_path / "e.npy"), "--tensor", "dense", "--no-progress") == 0
    assert np.load(tmp_path / "e.npy").shape[0] == 0
    assert run_cli("transform", "--spec", str(d / "features.json"), "--data", str(tmp_path / "empty.parquet"),
                   "--out", str(tmp_path / "e.parquet"), "--no-progress") == 0
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


def test_benchmark_script_runs(tmp_path):
    """Proves benchmarks/features_bench.py works end to end; judges no speed."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "features_bench.py"
    mod_spec = importlib.util.spec_from_file_location("features_bench", path)
    bench = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--rows", "3000", "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "features_bench.json").read_text())
    assert set(results["sizes"]) == {"1", "64", "3000"}
    assert (tmp_path / "features_bench.png").stat().st_size > 0


# ---- the config reference, and the commands with only the features extra ----------------------------

def without(*modules: str) -> str:
    """Python code after which importing ``modules`` fails as if they were not installed (an import hook
    raising ModuleNotFoundError: a None in sys.modules would look different to pyarrow's pandas probe)."""
    return ("import sys, importlib.abc\n"
            "class _Absent(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            f"        if name.split('.')[0] in {modules!r}:\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, _Absent())\n")


def skewless_subprocess(prelude: str, *argv: str) -> subprocess.CompletedProcess:
    code = prelude + "from skewless.server.frontend.cli import main\nsys.exit(main())\n"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)


def test_fit_help_points_to_the_reference_and_the_schema(capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", "--help")
    out = capsys.readouterr().out
    assert "docs/features/spec.md" in out and "skewless fit --print-schema" in out and "examples/configs" in out
    assert run_cli("fit", "--print-schema") == 0
    assert json.loads(capsys.readouterr().out) == schema()


def test_fit_reports_schema_errors_before_reading_the_data(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("features:\n  - {name: age, sacle: standard}\n  - {name: x, scale: z}\n")
    assert run_cli("fit", "--data", str(tmp_path / "absent.parquet"), "--config", str(tmp_path / "bad.yaml"),
                   "--out", str(tmp_path / "x.json")) == 2
    assert capsys.readouterr().err == ("skewless fit: error: features[0]: unknown key 'sacle' (did you mean "
                                       "'scale'?)\nfeatures[1].scale: expected 'standard' or 'minmax'\n")


def _served_log(path, table, spec, outputs):
    """The served-feature log's layout (server/features/served_log.py): context columns with a nanosecond
    UTC time, the raw inputs, one fixed_size_list per tensor, the spec hash in the schema metadata."""
    n = table.num_rows
    ns = np.arange(n, dtype=np.int64) * 1_000_003 + 1_765_000_000_123_456_789  # nanoseconds that are not 0
    cols = {"time": pa.array(ns).cast(pa.timestamp("ns", tz="UTC")), "model_name": pa.array(["m"] * n),
            "model_version": pa.array(np.ones(n, dtype=np.int64)), "request_id": table.column("request_id"),
            "row": pa.array(np.zeros(n, dtype=np.int32))}
    cols.update({name: table.column(name) for name in spec.input_names})
    cols.update({t.name: tensor_array(outputs[t.name]) for t in spec.outputs})
    pq.write_table(pa.table(cols).replace_schema_metadata({SPEC_HASH_KEY: spec.sha256.encode()}), path)


def test_skew_check_reports_skew_without_pandas(files, tmp_path):
    d, table = files
    spec = FeatureSpec.load(d / "features.json")
    out = spec.transform(table)
    out["dense"][7, 0] += 1.0  # a planted skew
    _served_log(tmp_path / "log.parquet", table, spec, out)
    proc = skewless_subprocess(without("pandas"), "skew-check", "--log", str(tmp_path / "log.parquet"),
                               "--spec", str(d / "features.json"), "--json", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mismatched_values"] == 1 and report["per_feature"] == {"age": 1}
    ex = report["examples"][0]
    assert ex["row"] == 7 and ex["request_id"] == "req-7"
    assert ex["time"].startswith("2025-12-06") and "123456789" not in ex["time"]  # row 7's own nanoseconds
    assert ex["time"].split(".")[1][:9] == f"{(123_456_789 + 7 * 1_000_003) % 10**9:09d}"


def test_fit_and_transform_need_no_pandas(files, tmp_path):
    d, table = files
    out = tmp_path / "features.json"
    proc = skewless_subprocess(without("pandas"), "fit", "--data", str(d / "train.parquet"),
                               "--config", str(d / "features.yaml"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == (d / "features.json").read_text()
    proc = skewless_subprocess(without("pandas"), "transform", "--spec", str(out), "--data",
                               str(d / "train.parquet"), "--out", str(tmp_path / "x.npy"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    expected = FeatureSpec.load(out).transform(table)
    assert np.load(tmp_path / "x.dense.npy").tobytes() == expected["dense"].tobytes()


def test_skew_check_with_another_spec_names_both_hashes(files, tmp_path, capsys):
    d, table = files
    spec = FeatureSpec.load(d / "features.json")
    _served_log(tmp_path / "log.parquet", table, spec, spec.transform(table))
    narrower = fit(CONFIG_YAML.replace("top_k: 3", "top_k: 2"), table)
    narrower.save(tmp_path / "other.json")
    assert run_cli("skew-check", "--log", str(tmp_path / "log.parquet"), "--spec", str(tmp_path / "other.json"),
                   "--no-progress") == 2
    err = capsys.readouterr().err
    assert (f"the log's spec hash {spec.sha256[:12]} differs from the given spec's {narrower.sha256[:12]}"
            in err), err
    assert "values per row in the log" in err and "holds" not in err


@pytest.mark.parametrize("blocked, argv", [
    (["pandas"], ["shadow-report", "LOGDIR"]),
    (["matplotlib"], ["shadow-report", "LOGDIR"]),
    (["matplotlib"], ["drift-report", "--spec", "SPEC", "--data", "DATA", "--png", "OUT", "--no-progress"]),
])
def test_report_commands_name_the_extra_to_install(files, tmp_path, blocked, argv):
    d, _ = files
    paths = {"LOGDIR": str(tmp_path), "SPEC": str(d / "features.json"), "DATA": str(d / "train.parquet"),
             "OUT": str(tmp_path / "drift.png")}
    proc = skewless_subprocess(without(*blocked), *[paths.get(a, a) for a in argv])
    assert proc.returncode == 2
    assert "pip install 'skewless[report]'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert blocked[0] in proc.stderr
    assert not (tmp_path / "drift.png").exists()


@pytest.mark.parametrize("missing", ["pyarrow", "jsonschema"])
def test_offline_commands_name_the_features_extra(files, tmp_path, missing):
    d, _ = files
    proc = skewless_subprocess(without(missing), "fit", "--data", str(d / "train.parquet"),
                               "--config", str(d / "features.yaml"), "--out", str(tmp_path / "f.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert missing in proc.stderr and "pip install 'skewless[features]'" in proc.stderr
    assert not (tmp_path / "f.json").exists()
