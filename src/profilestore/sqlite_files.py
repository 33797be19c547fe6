"""How profilestore opens its SQLite files (the log's and the embedded documents').

Two things both stores need, said once:

- **A new file's switch to WAL** can fail at once with "database is locked" when several
  processes open the same new file together: SQLite returns that instead of waiting
  (waiting could deadlock two connections upgrading their locks). :func:`switch_to_wal`
  tries again, briefly.
- **Read-only opening** (an auditor's copy, a snapshot, files they may not write):
  :func:`read_only_uri` names the file with ``mode=ro``, so SQLite never writes it. A WAL
  file closed cleanly has no ``-wal``/``-shm`` beside it, and SQLite cannot open it
  read-only where it may not create its ``-shm``: there, and only where no ``-wal`` holds
  unmerged transactions, the file is opened ``immutable`` (nothing may write it while it
  is read, which holds for a copy nobody can write).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

WAL_ATTEMPTS = 40


def switch_to_wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while another process holds the file."""
    for attempt in range(1, WAL_ATTEMPTS + 1):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == WAL_ATTEMPTS:
                raise
            time.sleep(0.01 * attempt)  # 8 s in all, at most


def read_only_uri(path: str) -> str:
    """A ``file:`` URI opening ``path`` read-only (see the module docstring)."""
    absolute = Path(path).absolute()
    uri = f"file:{quote(str(absolute))}?mode=ro"
    sidecars = [Path(f"{absolute}{suffix}") for suffix in ("-wal", "-shm")]
    if not os.access(absolute.parent, os.W_OK) and not any(p.exists() for p in sidecars):
        uri += "&immutable=1"
    return uri
