"""Build steps that pyproject.toml cannot express: protobuf/gRPC code generation and the Cython core.

Generated protobuf modules register their files in a private descriptor pool (``skewless.protos._pool``)
instead of protobuf's default pool: tritonclient registers Triton's own ``inference`` package in the
default pool, and two files defining the same symbols there cannot be imported into one process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "protos"
DEBUG = os.environ.get("SKEWLESS_DEBUG", "") not in ("", "0")
# AddressSanitizer + UBSan build of the native core (CI runs the native tests and the fuzzers on it): bounds
# checks come back on too, so an out-of-range index is reported by Cython before ASan sees the access.
SANITIZE = os.environ.get("SKEWLESS_SANITIZE", "") not in ("", "0")


def _rewrite_generated(path: Path) -> None:
    text = path.read_text()
    # Sibling imports become package-relative so the modules live inside skewless.protos.
    text = re.sub(r"^import (\w+_pb2) as (\w+)$", r"from . import \1 as \2", text, flags=re.M)
    if "_descriptor_pool.Default()" in text:
        text = text.replace("_descriptor_pool.Default()", "_pool.POOL")
        text = text.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool",
            "from google.protobuf import descriptor_pool as _descriptor_pool\nfrom . import _pool",
        )
    path.write_text(text)


def generate_protos() -> None:
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        return
    stamp_inputs = [*protos, Path(__file__)]
    outputs = [PROTO_DIR / f"{p.stem}_pb2.py" for p in protos]
    if all(o.exists() for o in outputs):
        newest_in = max(p.stat().st_mtime for p in stamp_inputs)
        if min(o.stat().st_mtime for o in outputs) > newest_in:
            return
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={PROTO_DIR}",
        f"--grpc_python_out={PROTO_DIR}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    for generated in PROTO_DIR.glob("*_pb2*.py"):
        _rewrite_generated(generated)


# Deterministic floating point is a product promise (bit-for-bit with offline training): no fast-math,
# no FMA contraction, whatever the compiler's defaults are.
COMPILE_ARGS = ["-O3", "-fno-fast-math", "-ffp-contract=off", "-fno-strict-aliasing"]
LINK_ARGS: list[str] = []
if SANITIZE:
    SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
    COMPILE_ARGS = ["-O1", "-fno-fast-math", "-ffp-contract=off", "-fno-strict-aliasing", *SAN]
    LINK_ARGS = SAN

# Modules whose state lives in C++ containers (the aggregate engine: hash maps keyed by key bytes, __int128 sums).
CPP_MODULES = {"aggregates"}

extensions = [
    Extension(
        f"skewless.native.{pyx.stem}",
        [str(pyx.relative_to(ROOT))],
        include_dirs=[numpy.get_include(), str(ROOT / "native")],
        language="c++" if pyx.stem in CPP_MODULES else None,
        extra_compile_args=COMPILE_ARGS + (["-std=c++17"] if pyx.stem in CPP_MODULES else []),
        extra_link_args=LINK_ARGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted((ROOT / "native").glob("*.pyx"))
]

# Generated before setup() so that both regular and editable builds find the modules in protos/.
generate_protos()
setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "initializedcheck": DEBUG,
            "cdivision": not DEBUG,
            "embedsignature": True,
        },
        quiet=True,
    ),
)
