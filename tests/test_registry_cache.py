"""The registry cache, source and redaction without a server: a file:// registry (fsspec's local
filesystem, the same code path as s3:// minus the network)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("fsspec")

from skewless.server.registry.cache import RejectedVersion, VersionCache  # noqa: E402
from skewless.server.registry.fsspec_source import FsspecSource, redact_url  # noqa: E402
from skewless.server.registry.publish import PublishError, publish  # noqa: E402
from skewless.server.registry.redact import redact  # noqa: E402
from skewless.server.registry.source import VersionPolicy  # noqa: E402

MB = 2**20


def make_version(src: Path, v: int, payload: bytes, shared: bytes = b"shared config") -> None:
    d = src / "m" / str(v)
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(payload)
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "features.json").write_bytes(shared)


@pytest.fixture
def registry(tmp_path):
    src, reg = tmp_path / "src", tmp_path / "reg"
    for v in (1, 2, 3):
        make_version(src, v, bytes([v]) * MB)
        publish(src / "m", f"file://{reg}", version=v)
    return src, reg, FsspecSource(f"file://{reg}")


def test_versions_follow_policy_and_manifests(registry):
    src, reg, source = registry
    (reg / "m" / "4").mkdir()  # a half-upload: no manifest
    (reg / "m" / "4" / "model.onnx").write_bytes(b"partial")
    choice = source.versions("m", VersionPolicy())
    assert [r.version for r in choice.wanted] == [3]
    assert choice.incomplete == {4: "incomplete: no manifest yet (upload in progress or abandoned)"}
    assert [r.version for r in source.versions("m", VersionPolicy("latest", latest=2)).wanted] == [2, 3]
    assert [r.version for r in source.versions("m", VersionPolicy("specific", specific=(1, 9))).wanted] == [1]
    with pytest.raises(PublishError, match="already published"):
        publish(src / "m", f"file://{reg}", version=3)


def test_stage_shares_blobs_and_rejects_corruption(registry, tmp_path):
    _, reg, source = registry
    cache = VersionCache(tmp_path / "cache", 100 * MB)
    one = cache.stage(source, "m", 1, source.listing("m", 1))
    two = cache.stage(source, "m", 2, source.listing("m", 2))
    assert (one.path / "sub" / "features.json").read_bytes() == b"shared config"
    assert len(os.listdir(cache.blobs)) == 3  # features.json stored once for both versions
    assert cache.disk_bytes() == 2 * MB + len(b"shared config")

    # Same size, different bytes: only the sha256 can tell.
    (reg / "m" / "3" / "model.onnx").write_bytes(b"\0" * MB)
    with pytest.raises(RejectedVersion, match="does not match the manifest") as exc:
        cache.stage(source, "m", 3, source.listing("m", 3))
    assert exc.value.event == "corrupt"
    # A manifest naming a file the store lacks: a partial upload.
    (reg / "m" / "3" / "model.onnx").unlink()
    with pytest.raises(RejectedVersion, match="partial upload") as exc:
        cache.stage(source, "m", 3, source.listing("m", 3))
    assert exc.value.event == "incomplete"
    # A manifest for another version is refused as a whole.
    manifest = json.loads((reg / "m" / "2.manifest.json").read_text())
    (reg / "m" / "1.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RejectedVersion, match="not 'm' version 1"):
        cache.stage(source, "m", 1, source.listing("m", 1))
    assert not list(cache.tmp.iterdir())  # nothing half-written left behind
    assert two.path.is_dir()


def test_eviction_is_lru_and_spares_protected(registry, tmp_path):
    _, _, source = registry
    cache = VersionCache(tmp_path / "cache", int(2.5 * MB))
    one = cache.stage(source, "m", 1, source.listing("m", 1))
    two = cache.stage(source, "m", 2, source.listing("m", 2))
    os.utime(one.path, (1, 1))  # the least recently used, but protected (serving, or kept for rollback)
    os.utime(two.path, (2, 2))
    three = cache.stage(source, "m", 3, source.listing("m", 3), protected={one.path})
    assert one.path.is_dir() and three.path.is_dir() and not two.path.exists()
    assert cache.disk_bytes() <= 2.5 * MB
    # Protected versions stay even when that leaves the cache over its bound.
    cache.max_bytes = MB
    cache.evict(protected={one.path, three.path})
    assert one.path.is_dir() and three.path.is_dir()
    cache.evict(protected={three.path})
    assert not one.path.exists() and three.path.is_dir()


def test_credentials_never_shown(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    text = ("Could not connect to https://user:pa55@host:9000/b?X-Amz-Credential=AKIA/x&X-Amz-Signature=abc "
            "with very-secret-value")
    clean = redact(text)
    assert "pa55" not in clean and "AKIA" not in clean and "abc" not in clean and "very-secret" not in clean
    assert "host:9000/b" in clean
    assert redact_url("s3://key:secret@bucket/prefix?token=x") == "s3://bucket/prefix"
