"""File events as wake-ups: how an idle daemon costs nothing and a busy one reacts fast.

The harvest threads sleep until a legacy file (or its -wal/-journal companion) changes,
with a polling fallback. Which paths wake which source, and the watchdog plumbing that
delivers it, is a mechanism of its own, apart from what the threads do once woken.
"""

from __future__ import annotations

import os
import threading

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer


class _Wake(FileSystemEventHandler):
    """Maps a file event (db, -wal, -journal) to the wake-up of the source it belongs to."""

    def __init__(self, events: dict[str, threading.Event]) -> None:
        self.events = events

    def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's type
        ev = self.events.get(event.src_path)
        if ev is not None:
            ev.set()


def watch_files(wakes: dict[str, threading.Event]) -> Observer:
    """Start an observer that sets `wakes[path]` when the file at path, or its -wal or
    -journal, changes; the caller stops it."""
    dirs: dict[str, dict[str, threading.Event]] = {}
    for path, ev in wakes.items():
        p = os.path.abspath(path)
        dirs.setdefault(os.path.dirname(p), {}).update({p: ev, p + "-wal": ev, p + "-journal": ev})
    observer = Observer()
    for d, events in dirs.items():
        observer.schedule(_Wake(events), d, recursive=False)
    observer.daemon = True
    observer.start()
    return observer
