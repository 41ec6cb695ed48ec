"""The native fuzz targets (tests/fuzz/native_fuzz.py) run for a bounded time each: no crash, no unexpected
exception. CI runs this file a second time on the AddressSanitizer + UBSan build of the native core."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the slow tier: atheris runs several seconds per target

pytest.importorskip("atheris")
HARNESS = Path(__file__).parent / "fuzz" / "native_fuzz.py"
SECONDS = int(os.environ.get("SKEWLESS_FUZZ_SECONDS", "5"))


@pytest.mark.parametrize("target", ["v2", "bytes", "features"])
def test_fuzz_target(target, tmp_path):
    r = subprocess.run([sys.executable, str(HARNESS), target, f"-max_total_time={SECONDS}", "-timeout=10",
                        f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus")],
                       capture_output=True, text=True, timeout=SECONDS + 120)
    tail = r.stderr[-3000:]
    assert r.returncode == 0 and "Done" in tail, tail
    runs = int(tail.rsplit("Done ", 1)[1].split()[0])
    assert runs > 1000, tail  # it really ran
    print(f"fuzz {target}: {runs} inputs in {SECONDS} s, no finding")
