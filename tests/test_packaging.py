"""Every package folder is in pyproject.toml's explicit package list: an editable install finds a folder that is
missing there, but ``pip install .`` leaves it out and the installed server fails at import (seen once with
``server/shm``)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {folder: name for name, folder in setuptools["package-dir"].items()}
    missing = []
    for folder, name in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix()
            # the innermost mapped folder names the package (server/client is skewless.client, not server's)
            base = max((f for f in folders if rel == f or rel.startswith(f + "/")), key=len)
            if base != folder:
                continue
            package = ".".join([name, *Path(rel).relative_to(base).parts])
            if package not in listed:
                missing.append(f"{package} ({rel})")
    assert not missing, f"package folders missing from [tool.setuptools] packages: {missing}"
