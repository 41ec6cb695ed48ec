"""The feature config's JSON Schema (``config_schema.json``) and short, key-path error messages from it.

The schema is the documented contract of the config (kinds, steps, options, defaults); ``skewless fit``
checks a config against it before fitting, and ``skewless fit --print-schema`` prints it for editors.
jsonschema's own messages quote whole sub-documents, so each error is rewritten here into one line in the
user's terms: ``features[3].scale: expected 'standard' or 'minmax'``, ``features[0]: unknown key 'sacle'``.
Checks that need the data (dtypes, row counts) stay in ``fit``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_FILE = "config_schema.json"
_TYPE_WORDS = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}


def schema_text() -> str:
    """The schema document as shipped in the package."""
    return resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


@cache
def schema() -> dict[str, Any]:
    return json.loads(schema_text())


@cache
def _validator() -> Any:
    try:
        from jsonschema import Draft202012Validator
    except ImportError:
        raise ImportError("checking a feature config needs jsonschema: pip install 'skewless[features]'") from None
    return Draft202012Validator(schema())


def config_errors(config: Any) -> list[str]:
    """Every schema violation of ``config`` as a one-line message, in document order; [] when valid."""
    messages: list[str] = []
    for err in sorted(_validator().iter_errors(config), key=lambda e: _sort_key(e.absolute_path)):
        for msg in _messages(err):
            if msg not in messages:
                messages.append(msg)
    return messages


# ---- messages ---------------------------------------------------------------------------------------

def _sort_key(path: Iterable[Any]) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path)


def _where(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _quote(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _alternatives(items: Sequence[str]) -> str:
    items = list(dict.fromkeys(items))
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _resolve(sub: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local ``$ref`` (the schema only uses ``#/$defs/NAME``) when it is the whole subschema."""
    while isinstance(sub, Mapping) and "$ref" in sub and "title" not in sub:
        ref = sub["$ref"]
        if not ref.startswith("#/$defs/"):
            break
        sub = schema()["$defs"][ref[len("#/$defs/"):]]
    return sub


def _describe(sub: Any) -> list[str]:
    """What a subschema accepts, as short phrases (alternatives)."""
    sub = _resolve(sub)
    if not isinstance(sub, Mapping):
        return ["nothing"] if sub is False else ["anything"]
    if "title" in sub:
        return [sub["title"]]
    if "enum" in sub:
        return [_quote(v) for v in sub["enum"]]
    if "const" in sub:
        return [_quote(sub["const"])]
    for key in ("anyOf", "oneOf"):
        if key in sub:
            return [d for branch in sub[key] if not _resolve(branch).get("deprecated")
                    for d in _describe(branch)]
    types = sub.get("type")
    if types is None:
        return ["anything"]
    words = []
    for t in [types] if isinstance(types, str) else types:
        word = _TYPE_WORDS[t]
        if t == "string" and sub.get("minLength") == 1:
            word = "a non-empty string"
        if t in ("integer", "number"):
            lo, hi = sub.get("minimum"), sub.get("maximum")
            if lo is not None and hi is not None:
                word += f" from {lo} to {hi}"
            elif lo is not None:
                word += f" >= {lo}"
            elif hi is not None:
                word += f" <= {hi}"
        words.append(word)
    return words


def _key_list(keys: Sequence[str]) -> str:
    return ", ".join(repr(k) for k in keys)


def _messages(err: Any) -> list[str]:
    """One jsonschema error as messages; anyOf/oneOf errors descend into the branch the value was meant for."""
    path = list(err.absolute_path)
    where = _where(path)
    prefix = f"{where}: " if where else ""
    kind = err.validator
    if kind in ("anyOf", "oneOf"):
        # A branch whose errors all lie below this value matched its shape (a one-key mapping with the right
        # key, a list of the right length): its errors say more than the list of alternatives.
        deeper: dict[int, list] = {}
        for sub in err.context:
            if len(sub.absolute_path) > len(path):
                deeper.setdefault(sub.schema_path[0], []).append(sub)
        shallow = {sub.schema_path[0] for sub in err.context if len(sub.absolute_path) <= len(path)}
        for branch in sorted(deeper):
            if branch not in shallow:
                return [m for sub in deeper[branch] for m in _messages(sub)]
        return [f"{prefix}expected {_alternatives(_describe(err.schema))}"]
    if kind == "type" and not path:
        return ["the config must be a mapping with a 'features' list"]
    if kind == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        if not where:
            return [f"unknown top-level key {_key_list(extra)}" if len(extra) == 1
                    else f"unknown top-level keys {_key_list(extra)}"]
        out = []
        for key in extra:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"{prefix}unknown key {key!r}{hint}")
        return out
    if kind == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return [f"{prefix}missing key {k!r}" for k in missing]
    if kind == "not" and "x-error" in err.schema:
        return [f"{prefix}{err.schema['x-error']}"]
    if kind == "minItems" and err.validator_value == 1 and "title" not in err.schema:
        return [f"{prefix}expected a non-empty list"]
    if kind == "false":
        return [f"{prefix}not allowed here"]
    return [f"{prefix}expected {_alternatives(_describe(err.schema))}"]
