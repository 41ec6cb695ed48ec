"""Reference distributions and the bins served tensors are counted in, for features and for predictions.

What ``skewless fit`` stores (``native/fit.py``): each feature's ``reference`` describes the *kernel's own
output* on the training data, i.e. the model tensor the batch observer sees, not the raw input:

* ``encode: value`` features and every ``passthrough``: a histogram of the one column ``output[:, offset]``
  (float32, or the integer output cast to double) after the spec's steps (impute, clip, log1p, scale).
  Its ``edges`` are deciles of the finite values, a value ``x`` falls in bin ``searchsorted(edges, x,
  'right')`` (so values outside the edges land in the end bins) and NaNs are counted apart (``nan``).
* ``encode: index`` (column ``offset``) and ``encode: onehot`` (columns ``offset .. offset+width``, exactly
  one 1 per row, its position is the index): the frequencies of the emitted index, the 20 most frequent
  in ``top``, the rest summed in ``other``, index 0 (missing) in ``missing``. That holds for vocabularies,
  bucketized numbers, hashes and crosses alike, so hashed features are compared too, as bucket frequencies
  (colliding categories share a bucket, so a shift between them is invisible: a limit, not an error).
* ``missing_indicator``: a histogram as above, but its values are 0/1 and the decile edges collapse to [0],
  putting every row in one bin; the reference's ``mean`` (the share of missing rows) gives the true
  two-bin distribution instead.

Served rows are binned in exactly that domain, so the training data itself reproduces every reference
count exactly (the tests check this). Features without a reference, or with one in an unknown form, are
skipped and reported with the reason; nothing is estimated.

Predictions have no reference in the spec. Each output gets a domain from its per-row shape: a float
output of width 1 a histogram of its value, width 2 a histogram of column 1 (a binary classifier's positive
score: its argmax would be a single threshold, blind to confidence moving on either side of 0.5), wider
float outputs the frequencies of their argmax class, integer/bool outputs of width 1 the frequencies of
their value. The reference comes from a file beside the model or is learnt from the first outputs served,
in the same form as the spec's references (``prediction_reference_document``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skewless.native.spec import FeatureSpec, decode_float, decode_vocabulary, encode_float

PREDICTION_FORMAT = "skewless.prediction_reference"
PREDICTION_FORMAT_VERSION = 1
HISTOGRAM_QUANTILES = 10  # the spec's reference histograms are deciles too (native/fit.py)
REFERENCE_TOP = 20
FLOAT_TYPES = ("FP16", "FP32", "FP64")
INT_TYPES = ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


class ReferenceFormatError(ValueError):
    """A reference document (spec entry or prediction reference file) is malformed."""


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class Bins:
    """How one feature or output is binned: reference counts, a label per bin, and ``count`` for served rows.

    ``count(block)`` takes the rows of the tensor named ``tensor`` as a 2-D array (rows, width) and returns
    int64 counts per bin, in the order of ``labels`` and ``reference``.
    """

    name: str
    tensor: str
    labels: tuple[str, ...]
    reference: np.ndarray

    def count(self, block: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def n_bins(self) -> int:
        return len(self.labels)


class HistogramBins(Bins):
    """Numeric bins: (-inf, e0), [e0, e1), ..., [e_last, inf), then NaN (one column of the tensor)."""

    def __init__(self, name: str, tensor: str, column: int, edges: Sequence[float], counts: Sequence[int],
                 nan: int, shown_edges: Sequence[float] | None = None) -> None:
        self.name, self.tensor, self.column = name, tensor, column
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or np.any(np.diff(self.edges) <= 0) or not np.isfinite(self.edges).all():
            raise ReferenceFormatError(f"{name}: histogram edges must be finite and increasing")
        if len(counts) != self.edges.size + 1:
            raise ReferenceFormatError(f"{name}: {self.edges.size} edges need {self.edges.size + 1} counts, "
                                 f"got {len(counts)}")
        self.reference = np.array([*counts, nan], dtype=np.int64)
        if (self.reference < 0).any():
            raise ReferenceFormatError(f"{name}: negative counts")
        # Rows are counted against the edges in the tensor's units; labels may show them in the raw input's
        # units (shown_edges, the same edges mapped back through the spec's steps) so that a person reads
        # "amount >= 120" rather than a standardized 1.311.
        e = [_fmt(v) for v in (self.edges.tolist() if shown_edges is None else list(shown_edges))]
        if e:
            labels = [f"< {e[0]}", *(f"[{a}, {b})" for a, b in zip(e, e[1:], strict=False)), f">= {e[-1]}"]
        else:
            labels = ["all values"]
        self.labels = (*labels, "NaN")

    def count(self, block: np.ndarray) -> np.ndarray:
        x = block[:, self.column].astype(np.float64)
        nan = np.isnan(x)
        n_nan = int(nan.sum())
        if n_nan:
            x = x[~nan]
        out = np.bincount(np.searchsorted(self.edges, x, side="right"), minlength=self.edges.size + 1)
        return np.append(out, n_nan).astype(np.int64)


class IndexBins(Bins):
    """Categorical bins over integer indices: given keys (several may share a bin), then one 'other' bin.

    The index of a row is ``block[:, column]``, or with ``onehot=True`` the position of the largest of the
    columns ``column .. column+width`` (the one 1 of a one-hot block, the argmax class of scores).
    """

    def __init__(self, name: str, tensor: str, column: int, width: int, onehot: bool,
                 keys: Sequence[int], key_bins: Sequence[int], labels: Sequence[str],
                 reference: Sequence[int]) -> None:
        self.name, self.tensor, self.column, self.width, self.onehot = name, tensor, column, width, onehot
        order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
        self.keys = np.asarray(keys, dtype=np.int64)[order]
        self.key_bins = np.asarray(key_bins, dtype=np.int64)[order]
        self.labels = tuple(labels)
        self.reference = np.asarray(reference, dtype=np.int64)
        self.other = len(self.labels) - 1
        if self.reference.size != len(self.labels) or (self.reference < 0).any():
            raise ReferenceFormatError(f"{name}: reference counts do not match the bins")

    def count(self, block: np.ndarray) -> np.ndarray:
        if self.onehot:
            idx = block[:, self.column:self.column + self.width].argmax(axis=1)
        else:
            idx = block[:, self.column].astype(np.int64)
        if self.keys.size == 0:
            out = np.zeros(len(self.labels), dtype=np.int64)
            out[self.other] = idx.size
            return out
        pos = np.minimum(np.searchsorted(self.keys, idx), self.keys.size - 1)
        hit = self.keys[pos] == idx
        bins = np.where(hit, self.key_bins[pos], self.other)
        return np.bincount(bins, minlength=len(self.labels)).astype(np.int64)


# ---- features ---------------------------------------------------------------------------------------------

def _index_labels(feat: Mapping[str, Any]) -> dict[int, str]:
    """Readable names of a feature's indices (what the spec's encodings mean, see native/spec.py)."""
    kind = feat["kind"]
    if kind == "vocabulary":
        enc = feat["vocabulary_encoding"]
        vocab = decode_vocabulary(enc, feat["vocabulary"], feat["name"])
        names = {0: "<missing>" if int(feat.get("oov_buckets", 0)) else "<missing/unknown>"}
        for i, v in enumerate(vocab, 1):
            names[i] = (str(int.from_bytes(v, "little", signed=True)) if enc == "int64"
                        else v.decode("utf-8", "backslashreplace"))
        for j in range(int(feat.get("oov_buckets", 0))):
            names[len(vocab) + 1 + j] = f"<oov{j}>"
        return names
    if kind == "numeric" and "bucketize" in feat:
        b = [-math.inf, *(decode_float(x) for x in feat["bucketize"]["boundaries"]), math.inf]
        names = {0: "<missing>"}
        names.update({j: f"[{_fmt(b[j - 1])}, {_fmt(b[j])})" for j in range(1, len(b))})
        return names
    return {0: "<missing>"}


def _feature_index_bins(feat: Mapping[str, Any], ref: Mapping[str, Any]) -> IndexBins:
    name = feat["name"]
    try:
        top = {int(i): int(c) for i, c in ref["top"]}
        rows, missing = int(ref["rows"]), int(ref["missing"])
    except (KeyError, TypeError, ValueError):
        raise ReferenceFormatError(f"{name}: index reference needs rows, missing and top [[index, count], ...]") \
            from None
    known = dict(top)
    known[0] = missing  # index 0 (missing, or unknown without OOV buckets) always gets its own bin
    other = rows - sum(known.values())
    if other < 0:
        raise ReferenceFormatError(f"{name}: reference counts exceed its {rows} rows")
    names = _index_labels(feat)
    keys, key_bins, labels, counts = [], [], [], []
    for i in sorted(known):
        keys.append(i)
        key_bins.append(len(labels))
        labels.append(names.get(i, f"#{i}"))
        counts.append(known[i])
    other_label = "<other>"
    if feat["kind"] == "vocabulary":
        # The OOV share as one bin of its own when its reference count is known exactly: every OOV index is
        # in `top`, or nothing is left over for them (other == 0). Otherwise OOV rows count as 'other'.
        n_vocab = len(feat["vocabulary"])
        oov = [n_vocab + 1 + j for j in range(int(feat.get("oov_buckets", 0))) if n_vocab + 1 + j not in known]
        if oov and other == 0:
            for i in oov:
                keys.append(i)
                key_bins.append(len(labels))
            labels.append("<oov>")
            counts.append(0)
        elif oov:
            other_label = "<other/oov>"
    labels.append(other_label)
    counts.append(other)
    onehot = feat["encode"] == "onehot"
    return IndexBins(name, feat["output"], int(feat["offset"]), int(feat["width"]), onehot, keys, key_bins,
                     labels, counts)


def _feature_value_bins(feat: Mapping[str, Any], ref: Mapping[str, Any]) -> HistogramBins:
    name = feat["name"]
    try:
        hist = ref["histogram"]
        edges = [decode_float(e, f"{name} edge") for e in hist["edges"]]
        counts = [int(c) for c in hist["counts"]]
        nan = int(ref.get("nan", 0))
    except (KeyError, TypeError, ValueError):
        raise ReferenceFormatError(f"{name}: value reference needs histogram.edges, histogram.counts and nan") \
            from None
    if feat["kind"] == "missing_indicator":
        # 0/1 values: fit's decile edges collapse to [0.0]; the mean is the exact share of ones.
        present = sum(counts)
        ones = round(decode_float(ref["mean"], f"{name} mean") * present) if present else 0
        bins = HistogramBins(name, feat["output"], int(feat["offset"]), [0.5], [present - ones, ones], nan)
        bins.labels = ("0 (present)", "1 (missing)", "NaN")
        return bins
    return HistogramBins(name, feat["output"], int(feat["offset"]), edges, counts, nan,
                         raw_edges(feat.get("steps") or [], edges))


def raw_edges(steps: Sequence[Mapping[str, Any]], edges: Sequence[float]) -> list[float]:
    """Bin edges in the tensor's units mapped back to the raw input's units through the inverse of the spec's
    numeric steps (last step first). For labels only: the inverse is rounded (and a clip or an impute has
    none, so it is the identity), while rows are always counted against the exact edges."""
    x = np.asarray(edges, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in reversed(steps):
            op = step.get("op")
            if op == "standardize":
                x = x * decode_float(step["scale"], "scale") + decode_float(step["mean"], "mean")
            elif op == "minmax":
                x = x * decode_float(step["range"], "range") + decode_float(step["min"], "min")
            elif op == "log1p":
                x = np.expm1(x)
    return x.tolist()


def feature_bins(spec: FeatureSpec) -> tuple[list[Bins], dict[str, str]]:
    """The bins of every feature whose reference can be compared with the served tensor, and the reason
    each other feature is skipped (feature name -> reason)."""
    widths = {t.name: t.width for t in spec.outputs}
    bins: list[Bins] = []
    skipped: dict[str, str] = {}
    for feat in spec.features:
        name = feat["name"]
        ref = feat.get("reference")
        if not isinstance(ref, Mapping):
            skipped[name] = "the spec has no reference statistics for it"
            continue
        value_domain = feat["encode"] == "value" or feat["kind"] == "passthrough"  # as native/fit.py decides
        try:
            if value_domain and "histogram" in ref:
                b: Bins = _feature_value_bins(feat, ref)
            elif not value_domain and "top" in ref:
                b = _feature_index_bins(feat, ref)
            else:
                skipped[name] = f"its reference ({sorted(ref)}) does not describe its {feat['encode']} encoding"
                continue
        except (ValueError, KeyError, TypeError) as exc:  # ReferenceFormatError and SpecError are ValueErrors
            skipped[name] = f"unusable reference: {exc}"
            continue
        if int(feat["offset"]) + int(feat["width"]) > widths[feat["output"]]:
            skipped[name] = "its columns lie outside its output tensor"
            continue
        if int(b.reference.sum()) == 0:
            skipped[name] = "its reference holds no rows"
            continue
        bins.append(b)
    return bins, skipped



# ---- predictions ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PredictionDomain:
    """What of an output is compared: a ``histogram`` of one column, or ``classes`` (the argmax of the row
    when ``width`` > 1, else the integer value)."""

    output: str
    mode: str
    column: int
    width: int

    def values(self, block: np.ndarray) -> np.ndarray:
        """The compared value of each row of a (rows, width) block: float64 or int64."""
        if self.mode == "histogram":
            return block[:, self.column].astype(np.float64)
        if self.width > 1:
            return block.argmax(axis=1).astype(np.int64)
        return block[:, 0].astype(np.int64)


def prediction_domain(name: str, datatype: str, row_dims: Sequence[int]) -> PredictionDomain | str:
    """The domain of an output from its datatype and per-row dims, or why it cannot be monitored."""
    if any(d < 0 for d in row_dims):
        return "its per-row shape is variable"
    width = math.prod(row_dims)
    if datatype in FLOAT_TYPES:
        if width == 1:
            return PredictionDomain(name, "histogram", 0, 1)
        if width == 2:
            return PredictionDomain(name, "histogram", 1, 2)
        if width > 2:
            return PredictionDomain(name, "classes", 0, width)
        return "it has no values per row"
    if datatype in INT_TYPES and width == 1:
        return PredictionDomain(name, "classes", 0, 1)
    return f"a {datatype} output of {width} values per row has no drift domain"


def learn_histogram(values: np.ndarray) -> dict[str, Any]:
    """A reference histogram in the spec's form: decile edges of the finite values, counts, NaN count."""
    x = np.asarray(values, dtype=np.float64)
    nan = np.isnan(x)
    finite = x[np.isfinite(x)]
    edges = (np.unique(np.quantile(finite, np.arange(1, HISTOGRAM_QUANTILES) / HISTOGRAM_QUANTILES))
             if finite.size else np.zeros(0))
    counts = np.bincount(np.searchsorted(edges, x[~nan], side="right"), minlength=edges.size + 1)
    return {"rows": int(x.size), "nan": int(nan.sum()),
            "histogram": {"edges": [encode_float(e) for e in edges.tolist()], "counts": counts.tolist()}}


def learn_classes(values: np.ndarray) -> dict[str, Any]:
    """Class frequencies in the spec's form: the REFERENCE_TOP most frequent, the rest summed in 'other'."""
    uniq, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    order = np.lexsort((uniq, -counts))[:REFERENCE_TOP]
    top = [[int(uniq[i]), int(counts[i])] for i in order]
    rows = int(counts.sum())
    return {"rows": rows, "top": top, "other": rows - sum(c for _, c in top)}


def learn_prediction(domain: PredictionDomain, block: np.ndarray) -> dict[str, Any]:
    """One output's reference entry learnt from its rows (a (rows, width) block)."""
    values = domain.values(block)
    entry = learn_histogram(values) if domain.mode == "histogram" else learn_classes(values)
    return {"domain": domain.mode, "column": domain.column, **entry}


def prediction_reference_document(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The prediction reference file for arrays of outputs (rows first; e.g. predictions on a validation
    set). Write it as JSON beside the model and name it in ``skewless.prediction_reference``::

        {"format": "skewless.prediction_reference", "format_version": 1,
         "outputs": {"probabilities": {"domain": "histogram", "column": 1, "rows": 2000, "nan": 0,
                                       "histogram": {"edges": ["0x1.2p-3", ...], "counts": [200, ...]}},
                     "label": {"domain": "classes", "column": 0, "rows": 2000,
                               "top": [[0, 1500], [1, 500]], "other": 0}}}

    Floats are hex strings as in ``features.json`` (plain JSON numbers are read too).
    """
    doc: dict[str, Any] = {"format": PREDICTION_FORMAT, "format_version": PREDICTION_FORMAT_VERSION,
                           "outputs": {}}
    for name, arr in outputs.items():
        arr = np.asarray(arr)
        block = arr.reshape(arr.shape[0], -1)
        kind = "FP64" if arr.dtype.kind == "f" else "INT64" if arr.dtype.kind in "iub" else "BYTES"
        domain = prediction_domain(name, kind, [block.shape[1]])
        if isinstance(domain, str):
            raise ReferenceFormatError(f"output '{name}': {domain}")
        doc["outputs"][name] = learn_prediction(domain, block)
    return doc


def _float(v: Any, where: str) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return decode_float(v, where)


def prediction_bins(domain: PredictionDomain, entry: Mapping[str, Any]) -> Bins:
    """The bins of one output from its reference entry (learnt, or read from the reference file)."""
    name = domain.output
    if not isinstance(entry, Mapping):
        raise ReferenceFormatError(f"output '{name}': the reference entry must be an object")
    mode = entry.get("domain", domain.mode)
    if mode != domain.mode:
        raise ReferenceFormatError(f"output '{name}': the reference is a {mode!r} but this output is compared as "
                             f"{domain.mode!r} (its shape decides)")
    column = entry.get("column", domain.column)
    if not isinstance(column, int) or not 0 <= column < domain.width:
        raise ReferenceFormatError(f"output '{name}': column {column!r} is not within its {domain.width} values")
    try:
        if mode == "histogram":
            hist = entry["histogram"]
            edges = [_float(e, f"output '{name}' edge") for e in hist["edges"]]
            return HistogramBins(name, name, column, edges, [int(c) for c in hist["counts"]],
                                 int(entry.get("nan", 0)))
        top = [(int(k), int(c)) for k, c in entry["top"]]
        other = int(entry.get("other", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceFormatError(f"output '{name}': malformed {mode} reference ({exc})") from None
    keys = [k for k, _ in top]
    if len(set(keys)) != len(keys):
        raise ReferenceFormatError(f"output '{name}': duplicate classes in the reference")
    onehot = domain.width > 1
    return IndexBins(name, name, 0, domain.width, onehot, keys, list(range(len(keys))),
                     [f"class {k}" for k in keys] + ["<other>"], [c for _, c in top] + [other])


def read_prediction_reference(doc: Any) -> dict[str, Mapping[str, Any]]:
    """The per-output entries of a prediction reference document, after checking its header."""
    if not isinstance(doc, Mapping) or doc.get("format") != PREDICTION_FORMAT:
        raise ReferenceFormatError(f"not a {PREDICTION_FORMAT} document")
    if doc.get("format_version") != PREDICTION_FORMAT_VERSION:
        raise ReferenceFormatError(f"unsupported format_version {doc.get('format_version')!r}")
    outputs = doc.get("outputs")
    if not isinstance(outputs, Mapping):
        raise ReferenceFormatError("'outputs' must map output names to reference entries")
    return dict(outputs)
