"""Writing a `cdc.toml`: the few TOML shapes a config has (scalars, one level of tables,
arrays of tables), with every string JSON-escaped, which is valid TOML for any name a
legacy file can hold (quotes, backslashes, control characters, unicode)."""

from __future__ import annotations

import json


def render_toml(data: dict) -> str:
    lines: list[str] = []
    for k, v in data.items():
        if not isinstance(v, dict | list):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]"] + [f"{_key(kk)} = {_value(vv)}" for kk, vv in v.items()]
    for k, v in data.items():
        if isinstance(v, list):
            for item in v:
                lines += ["", f"[[{_key(k)}]]"]
                lines += [f"{_key(kk)} = {_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def _key(k: str) -> str:
    bare = k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k)
    return k if bare else _value(k)


def _value(x: object) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int | float):
        return repr(x)
    if isinstance(x, str):
        return json.dumps(x, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"unsupported TOML value {x!r}")
