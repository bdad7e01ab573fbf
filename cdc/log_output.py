"""Log output: the usual text lines, or one JSON object per line (`cdc --log-format json`)
for log shippers, with the context an operator filters on: source, table, target, offset.

Context comes from `extra={...}` on the call where a module has it, and otherwise from the
thread: the daemon runs one harvest thread per source, named `harvest-<source>`.
"""

from __future__ import annotations

import json
import logging
import os

CONTEXT = ("source", "table", "target", "offset")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LIFECYCLE = "cdc.lifecycle"
ENV = "CDC_LOG_FORMAT"  # passed on to the apply worker process
LEVEL_ENV = "CDC_LOG_LEVEL"  # likewise: the worker logs at the level the daemon was given


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        if record.threadName and record.threadName.startswith("harvest-"):
            out["source"] = record.threadName[len("harvest-") :]
        for k in CONTEXT:
            v = getattr(record, k, None)
            if v is not None:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: int, fmt: str | None = None) -> None:
    """Set up the root logger once, in text or JSON; the choice is exported to child
    processes (the apply worker) through the environment."""
    fmt = fmt or os.environ.get(ENV, "text")
    os.environ[ENV] = fmt
    os.environ[LEVEL_ENV] = str(level)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # `cdc run`'s up and stopped lines (cdc.daemon.lifecycle) show at the default level.
    logging.getLogger(LIFECYCLE).setLevel(min(level, logging.INFO))


def inherited_level() -> int:
    """The level a parent `cdc` process was configured with (INFO when run on its own)."""
    try:
        return int(os.environ.get(LEVEL_ENV, logging.INFO))
    except ValueError:
        return logging.INFO
