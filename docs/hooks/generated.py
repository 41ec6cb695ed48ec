"""mkdocs hook: reference tables generated from the code, so that the docs cannot drift from it.

A page line that is exactly ``<!-- generated: MODULE:FUNCTION -->`` is replaced by the Markdown that
``MODULE.FUNCTION()`` returns (the module imported from the installed package, e.g.
``skewless.server.frontend.commands_table:commands_markdown``). A marker naming a module or function that
does not exist, or a function that fails or returns something other than a string, stops the build with a
message naming the page and the marker: a reference table that silently vanished would be worse than none.
"""

from __future__ import annotations

import importlib
import re

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^[ \t]*<!--\s*generated:\s*(?P<target>\S+?)\s*-->[ \t]*$", re.MULTILINE)


def render(target: str) -> str:
    """The Markdown that ``MODULE:FUNCTION`` returns; PluginError saying what is wrong otherwise."""
    module_name, sep, function_name = target.partition(":")
    if not sep or not module_name or not function_name:
        raise PluginError(f"generated marker '{target}' must name MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"generated marker '{target}': cannot import module '{module_name}': {e}") from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise PluginError(f"generated marker '{target}': module '{module_name}' has no function '{function_name}'")
    try:
        text = function()
    except Exception as e:  # any failure of a generator must fail the build, with its reason
        raise PluginError(f"generated marker '{target}': {function_name}() raised {type(e).__name__}: {e}") from e
    if not isinstance(text, str):
        raise PluginError(f"generated marker '{target}': {function_name}() returned {type(text).__name__}, "
                          "not a Markdown string")
    return text.rstrip("\n")


def expand(markdown: str, where: str = "page") -> str:
    """``markdown`` with every marker line replaced by its generated table."""

    def replace(match: re.Match[str]) -> str:
        try:
            return render(match.group("target"))
        except PluginError as e:
            raise PluginError(f"{where}: {e}") from e

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return expand(markdown, page.file.src_uri)
