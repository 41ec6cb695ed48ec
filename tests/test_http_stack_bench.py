"""benchmarks/http_stack_bench.py: a smoke run (half a second a point) in which skewless's REST frontend, the
bare handler on aiohttp and the same handler on uvicorn + httptools each answer, and no server is left
behind; no speed is judged."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httptools")
pytest.importorskip("psutil")
pytest.importorskip("matplotlib")

from helpers import child_servers  # noqa: E402

from skewless.benchmarks import http_stack_bench  # noqa: E402

pytestmark = pytest.mark.slow


def test_every_stack_serves_the_same_data_plane(tmp_path):
    before = set(child_servers("skewless.benchmarks.http_stack_bench"))
    rc = http_stack_bench.main(["--clients", "1,2", "--seconds", "0.5", "--rounds", "1", "--out", str(tmp_path)])
    assert rc == 0
    assert not set(child_servers("skewless.benchmarks.http_stack_bench")) - before, "a server was left running"
    rows = json.loads((tmp_path / "http_stack.json").read_text())
    assert sorted((r["stack"], r["clients"]) for r in rows) == sorted(
        (s, c) for s in http_stack_bench.STACKS for c in (1, 2))
    for r in rows:  # a client asserts HTTP 200 on every reply: a failing stack would count nothing
        assert r["requests"] > 0 and r["cpu_us_per_request"] > 0, r
    assert (tmp_path / "http_stack.png").stat().st_size > 0
