"""The documentation: README links into docs/ resolve, and the generated-reference hook of the mkdocs site
replaces its markers with the code's own tables and fails loudly on a marker naming nothing.

The site itself is built by .ci/run (`mkdocs build --strict`); these are the parts a change to the code (a
renamed generator, a moved page) breaks first.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\((?!https?://|#)([^)\s#]+)(?:#[^)]*)?\)")


def _hook():
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("docs_generated_hook", ROOT / "docs" / "hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_links_point_at_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    targets = LINK.findall(readme)
    assert any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_readme_stays_short_and_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "skewless serve --model-repository examples/models" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    # The README's test command and .ci/run run the same fast tier.
    assert 'python -m pytest -q -m "not slow"' in readme and 'python -m pytest -q -m "not slow"' in ci
    assert 'pip install -q -e ".[cpu,test]" && ruff check .' in readme and 'pip install -q -e ".[cpu,test]" && ruff check .' in ci


def test_every_nav_page_exists():
    config = "\n".join(line for line in (ROOT / "mkdocs.yml").read_text().splitlines()
                       if not line.lstrip().startswith("#"))
    nav = re.findall(r":\s*(\S+\.md)\s*$", config, re.MULTILINE)
    assert "index.md" in nav and "architecture.md" in nav
    assert [p for p in nav if not (ROOT / "docs" / p).is_file()] == []


def test_marker_is_replaced_by_the_generated_table():
    hook = _hook()
    page = "# Commands\n\n<!-- generated: skewless.server.frontend.commands_table:commands_markdown -->\n\nafter\n"
    out = hook.expand(page, "reference/commands.md")
    assert "<!-- generated" not in out and out.endswith("\n\nafter\n")
    rows = [line for line in out.splitlines() if line.startswith("| `skewless ")]
    names = {re.match(r"\| `skewless (\S+)`", r).group(1) for r in rows}
    assert {"serve", "examples", "fit", "transform", "skew-check", "bench", "audit"} <= names
    serve = next(r for r in rows if r.startswith("| `skewless serve`"))
    assert "KServe v2" in serve  # the subcommand's own --help line


@pytest.mark.parametrize("marker,message", [
    ("skewless.server.no_such_module:table", "cannot import module 'skewless.server.no_such_module'"),
    ("skewless.server.frontend.commands_table:no_such_function", "has no function 'no_such_function'"),
    ("skewless.server.frontend.commands_table", "must name MODULE:FUNCTION"),
])
def test_a_marker_naming_nothing_fails_the_build(marker, message):
    hook = _hook()
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match=re.escape(message)) as e:
        hook.expand(f"text\n<!-- generated: {marker} -->\n", "reference/x.md")
    assert "reference/x.md" in str(e.value)


def test_text_that_only_mentions_a_marker_is_left_alone():
    hook = _hook()
    page = "Write `<!-- generated: MODULE:FUNCTION -->` on a line of its own.\n"
    assert hook.expand(page) == page
