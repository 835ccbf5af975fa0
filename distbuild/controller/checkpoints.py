"""Copying the state database's write-ahead log into the database, off the reactor thread.

SQLite in WAL mode does this itself inside a commit, each time the log
passes 1,000 pages: that commit then writes the pages back and waits for
two fsyncs, 10 to 120 ms here, and every message of that reactor turn
waits with it. With automatic checkpoints off, a thread of its own
does a passive checkpoint every second on its own connection. Writers
are not blocked by a passive checkpoint, and the thread holds no GIL
while SQLite works, so the reactor's commits only append to the log.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

EVERY_SECONDS = 1.0


class Checkpointer:
    """A daemon thread that checkpoints one database's WAL every `every` seconds."""

    def __init__(self, path: Path | str, every: float = EVERY_SECONDS, log=None):
        self.path = str(path)
        self.every = every
        self.log = log
        self.done = 0  # checkpoints made, for tests and figures
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the checkpoint in progress, if any."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            while not self._stop.wait(self.every):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.done += 1
                except sqlite3.Error as e:  # the next one tries again
                    if self.log is not None:
                        self.log(f"checkpointing {self.path}: {e}")
        finally:
            db.close()
