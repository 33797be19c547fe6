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
- **No plaintext left** (erasure): :func:`find_plaintext` searches every byte of a
  store's files (the database, its ``-wal``, ``-shm`` and ``-journal``) for values that
  must be gone, and says only where, never what.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
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


CHUNK_BYTES = 16 * 2**20

SIDECARS = ("-wal", "-shm", "-journal")
"""The files SQLite keeps beside a database; any of them may hold page images."""


def store_files(database: str | Path) -> list[Path]:
    """The database file and those of its sidecars that exist."""
    path = Path(database)
    return [path, *(p for s in SIDECARS if (p := Path(f"{path}{s}")).exists())]


def find_plaintext(
    paths: Sequence[Path], probes: Sequence[bytes], *, chunk_bytes: int = CHUNK_BYTES
) -> list[int]:
    """The indices of the ``probes`` found anywhere in the files ``paths`` (every byte:
    live pages, free pages, the unused space in pages, the log), sorted; [] if none.

    Only indices are returned, so the result can be logged and written into a receipt.
    A probe is raw bytes: encode a value the way it is stored (UTF-8 for SQLite's text
    and its JSON). A missing file holds nothing.

    Files are read in chunks of ``chunk_bytes`` into one reused buffer, each searched
    with ``bytearray.find`` (C speed), overlapping by the longest probe less one byte so
    that a value straddling two chunks is found. A probe containing a shorter one (an
    email and its lookup key ``email:...``) is looked for in a chunk only where the
    shorter one is there: most chunks are searched for the shorter probes only. Not a
    memory map: another process may truncate a ``-wal`` while it is read, which would
    kill a reader of a mapping (SIGBUS) and only shortens a read.
    """
    for i, probe in enumerate(probes):
        if not probe:
            raise ValueError(f"probes[{i}] is empty: it would be found everywhere")
    overlap = max((len(p) for p in probes), default=1) - 1
    order = sorted(range(len(probes)), key=lambda i: len(probes[i]))
    # For each probe, the shorter ones (searched before it) it contains.
    within = {i: [j for j in order[:at] if probes[j] in probes[i]] for at, i in enumerate(order)}
    found: set[int] = set()
    buffer = bytearray(overlap + chunk_bytes)
    view = memoryview(buffer)
    for path in paths:
        try:
            file = path.open("rb")
        except FileNotFoundError:
            continue
        with file:
            kept = 0  # the previous chunk's last bytes, at the buffer's start
            while len(found) < len(probes):
                read = file.readinto(view[kept : kept + chunk_bytes])
                if not read:
                    break
                end = kept + read
                here: set[int] = set()  # in this chunk (or found before: not searched)
                for i in order:
                    if any(j not in here for j in within[i]):
                        continue  # a probe it contains is not in this chunk: nor is it
                    if i in found or buffer.find(probes[i], 0, end) >= 0:
                        here.add(i)
                found |= here
                kept = min(overlap, end)
                buffer[:kept] = buffer[end - kept : end]
    view.release()
    return sorted(found)
