"""The one door: the edges reach the stores only through ProfileStore.

The HTTP API, the web UI, the CLI, the worker and the follower may import the store and the public
value types, never an adapter, the log service, the consumer loop or the run journal, and
may not reach into a store's private parts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "profilestore"
EDGES = sorted(
    [
        *SRC.glob("api/*.py"),
        *SRC.glob("web/*.py"),
        SRC / "cli.py",
        SRC / "worker.py",
        SRC / "follower.py",
    ]
)

FORBIDDEN_MODULES = {
    "profilestore.projector",
    "profilestore.sqlite_documents",
    "profilestore.mongo_documents",
    "profilestore.sqlite_log",
    "profilestore.postgres_log",
    "profilestore.replay",
}
FORBIDDEN_NAMES = {
    "EventLog",
    "EventRecorder",
    "DocumentStore",
    "SectionStore",
    "LeaseStore",
    "RecordStore",
    "Consumer",
    "Leases",
    "Live",
    "Journal",
    "ProjectionHandler",
    "open_log",
    "open_documents",
}
STORE_INTERNALS = {"log", "documents", "projector", "journal", "recorder"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module in FORBIDDEN_MODULES:
                found.append(f"{where} imports {node.module}")
            found += [
                f"{where} imports {alias.name}"
                for alias in node.names
                if alias.name in FORBIDDEN_NAMES
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{where} imports {alias.name}"
                for alias in node.names
                if alias.name in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{where} reaches into .{node.attr}")
            of_settings = isinstance(node.value, ast.Attribute) and node.value.attr == "settings"
            if node.attr in STORE_INTERNALS and not of_settings:  # settings.documents is config
                found.append(f"{where} reaches into .{node.attr}")
    return found


@pytest.mark.parametrize("path", EDGES, ids=lambda p: str(p.relative_to(SRC)))
def test_an_edge_goes_through_the_store_only(path: Path) -> None:
    assert _violations(path) == []


def test_the_web_ui_is_among_the_edges_checked() -> None:
    assert {"pages.py", "views.py", "session.py"} <= {
        p.name for p in EDGES if p.parent.name == "web"
    }


def test_the_check_catches_a_reach_past_the_door(tmp_path: Path) -> None:
    bad = SRC / "api" / "_probe_for_test.py"
    try:
        bad.write_text(
            "from profilestore.projector import ProjectionHandler\n"
            "def f(store):\n    return store.documents.get('x'), store._log.head()\n"
        )
        assert len(_violations(bad)) == 4  # the module, the name, two reaches
    finally:
        bad.unlink()
