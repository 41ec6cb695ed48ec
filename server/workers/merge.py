"""Sum what several worker processes count into the one answer a client sees: ModelStatistics replies and
Prometheus text pages. Both run on control-plane calls only, never per inference request."""

from __future__ import annotations

import re

from skewless.protos import grpc_service_pb2 as pb

_MAX_FIELDS = {"last_inference"}  # a time stamp, not a count: the latest one wins


def _add(dst, src) -> None:
    """Add ``src``'s numeric fields into ``dst`` (same message type), recursively."""
    for field, value in src.ListFields():
        if field.type == field.TYPE_MESSAGE:
            if field.label == field.LABEL_REPEATED:
                _add_repeated(getattr(dst, field.name), value)
            else:
                _add(getattr(dst, field.name), value)
        elif field.type in (field.TYPE_STRING, field.TYPE_BYTES, field.TYPE_BOOL) or \
                field.label == field.LABEL_REPEATED:
            continue  # names and versions: equal in matched entries
        elif field.name in _MAX_FIELDS:
            setattr(dst, field.name, max(getattr(dst, field.name), value))
        else:
            setattr(dst, field.name, getattr(dst, field.name) + value)


def _key(message) -> tuple:
    return tuple(getattr(message, k) for k in ("name", "version", "batch_size") if hasattr(message, k))


def _add_repeated(dst, src) -> None:
    """Entries matched by name/version/batch_size; unmatched ones appended."""
    by_key = {_key(m): m for m in dst}
    for m in src:
        target = by_key.get(_key(m))
        if target is None:
            dst.add().CopyFrom(m)
        else:
            _add(target, m)


def sum_statistics(replies: list[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    out = pb.ModelStatisticsResponse()
    for reply in replies:
        _add_repeated(out.model_stats, reply.model_stats)
    for stats in out.model_stats:  # batch sizes in order, as one process lists them
        ordered = sorted(stats.batch_stats, key=lambda b: b.batch_size)
        del stats.batch_stats[:]
        stats.batch_stats.extend(ordered)
    return out


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)$")


def _number(v: float) -> str:
    return str(int(v)) if v == int(v) and abs(v) < 2**63 else repr(v)


def merge_prometheus(pages: dict[int, bytes]) -> bytes:
    """One page from each worker's pages (by worker index): counters and histograms summed sample by sample,
    gauges kept per worker under a ``worker`` label (a model's readiness or a cache size do not add up)."""
    families: dict[str, tuple[list[str], str, dict[str, float]]] = {}  # name -> (help/type lines, kind, samples)
    for index, page in sorted(pages.items()):
        current = None
        for line in page.decode().splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    fam = families.setdefault(parts[2], ([], "untyped", {}))
                    if parts[1] == "TYPE":
                        families[parts[2]] = (fam[0], parts[3] if len(parts) > 3 else "untyped", fam[2])
                    if line not in fam[0]:
                        fam[0].append(line)
                    current = parts[2]
                continue
            m = _SAMPLE.match(line)
            if m is None or current is None:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            _, kind, samples = families[current]
            if kind == "gauge":
                inner = f'worker="{index}"' + ("," + labels[1:-1] if labels[1:-1] else "")
                samples[f"{name}{{{inner}}}"] = value
            else:
                key = f"{name}{labels}"
                samples[key] = samples.get(key, 0.0) + value
    lines: list[str] = []
    for head, _, samples in families.values():
        lines.extend(head)
        lines.extend(f"{key} {_number(v)}" for key, v in samples.items())
    return ("\n".join(lines) + "\n").encode()
