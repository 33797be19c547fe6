"""The ``profilestore`` command: parse, call :class:`~profilestore.store.ProfileStore`, render.

JSON goes to stdout, progress bars and summaries to stderr, so output can be piped.
Exit codes: 0 success; 1 not found, some input rejected, drift or tampering found; 2 bad
usage or configuration; 3 a store is unavailable (unreachable, locked, read-only, full,
corrupt: the message names it and says what to do; nothing half-written is kept).

Reading commands (profile, find, history, export, status, datasets, schedule list, verify,
audit digest, audit verify, triggers list, triggers log, outbox list, experiments report)
open the stores read-only, so they work on a copy nobody may write (see
:func:`~profilestore.store.open_store`).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from profilestore.config import Settings, load_settings
from profilestore.errors import (
    AmbiguousIdentifier,
    AppendConflict,
    ConfigError,
    DocumentsUnavailable,
    InvalidArgument,
    InvalidEvent,
    InvalidIdentifier,
    LogUnavailable,
    NotFound,
    NotFoundHistory,
    ProfileStoreError,
    ReadOnlyStore,
    StoreClosed,
    StoreMissing,
    UnknownDataset,
)
from profilestore.eventlog import event_json
from profilestore.identifiers import LOOKUP_KINDS, one_identifier
from profilestore.schedule import fire_times, next_due, parse_cadence
from profilestore.store import ProfileStore, load_projections, open_store

F = TypeVar("F", bound=Callable[..., Any])

UNAVAILABLE = (LogUnavailable, DocumentsUnavailable, ReadOnlyStore, StoreClosed, AppendConflict)
"""Errors of a store rather than of the request: exit code 3."""

stderr = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep
_json = msgspec.json.Encoder(decimal_format="string")


def _emit(value: Any, *, pretty: bool) -> None:
    data = _json.encode(value)
    if pretty:
        data = msgspec.json.format(data, indent=2)
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


class _Context:
    def __init__(self, config: str | None, home: str | None) -> None:
        self.config = config
        self.home = home

    @property
    def settings(self) -> Settings:
        """The settings, read afresh (for a command that opens no store)."""
        return load_settings(self.config, home=self.home)

    def open(self, *, read_only: bool = False) -> ProfileStore:
        settings = load_settings(self.config, home=self.home)
        if read_only:
            try:
                return open_store(settings, read_only=True)
            except StoreMissing:
                pass  # a new home: nothing to protect, so it is created as by any command
        return open_store(settings)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn profilestore errors into a message on stderr and an exit code."""
    try:
        yield
    except (NotFound, AmbiguousIdentifier) as e:
        label = "not found" if isinstance(e, NotFound) else "ambiguous"
        stderr.print(f"[red]{label}:[/red] {escape(str(e))}")
        sys.exit(1)
    except (ConfigError, UnknownDataset, InvalidIdentifier, InvalidArgument) as e:
        stderr.print(f"[red]error:[/red] {escape(str(e))}")
        sys.exit(2)
    except UNAVAILABLE as e:
        stderr.print(f"[red]unavailable:[/red] {escape(str(e))}")
        sys.exit(3)
    except OSError as e:
        # A file the stores could not even reach (a directory not creatable, a disk full
        # before the database saw it): one line, not a traceback.
        where = f" ({e.filename})" if e.filename else ""
        stderr.print(
            f"[red]unavailable:[/red] {escape(e.strerror or type(e).__name__)}{escape(where)}; "
            "check the disk space and the permissions of the store's files, then retry"
        )
        sys.exit(3)
    except ProfileStoreError as e:
        stderr.print(f"[red]error:[/red] {escape(str(e))}")
        sys.exit(1)


@click.group()
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Settings file (default: $PROFILESTORE_CONFIG or ./config/profilestore.toml).",
)
@click.option(
    "--home",
    default=None,
    help="Data directory of the embedded stores (default: $PROFILESTORE_HOME or ./.profilestore).",
)
@click.pass_context
def main(ctx: click.Context, config: str | None, home: str | None) -> None:
    """An event-sourced customer-profile store."""
    ctx.obj = _Context(config, home)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    )


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Events per all-or-nothing batch (default: projector.ingest_batch).",
)
@click.pass_obj
def ingest(obj: _Context, file: IO[bytes], batch_size: int | None) -> None:
    """Append events from FILE (JSON Lines; - for stdin).

    Each batch is all or nothing: a bad line rejects its batch (reported with its line
    number, field and reason) and ingestion goes on with the next batch. Fix the line
    and ingest the file again: events already stored are counted as duplicates.
    """
    with _errors(), obj.open() as store:
        size = batch_size or store.settings.projector.ingest_batch
        total = _file_size(file)
        appended = duplicates = rejected = 0
        started = time.perf_counter()
        with _progress_bytes() as progress:
            task = progress.add_task("ingest", total=total)
            for numbers, lines, consumed in _batches(file, size):
                try:
                    result = store.append(lines)
                    appended += result.appended
                    duplicates += result.duplicates
                except InvalidEvent as e:
                    rejected += len(lines)
                    progress.console.print(
                        f"[red]rejected[/red] the batch of lines {numbers[0]}-{numbers[-1]}: "
                        + escape(f"line {numbers[e.index]} is invalid at `{e.path}`: {e.reason}")
                    )
                progress.advance(task, consumed)
        elapsed = time.perf_counter() - started
        stderr.print(
            f"appended {appended}, duplicates {duplicates}, rejected {rejected} "
            f"in {elapsed:.1f}s ({appended / elapsed if elapsed else 0:,.0f} events/s)"
        )
        if rejected:
            sys.exit(1)


def _progress_bytes() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=stderr,
    )


def _file_size(file: IO[bytes]) -> int | None:
    try:
        return Path(file.name).stat().st_size if file.name not in ("<stdin>", "-") else None
    except (OSError, TypeError, AttributeError):
        return None


def _batches(file: IO[bytes], size: int) -> Iterator[tuple[list[int], list[bytes], int]]:
    """Batches of non-blank lines: (their line numbers, the lines, bytes consumed)."""
    numbers: list[int] = []
    batch: list[bytes] = []
    consumed = 0
    for number, raw in enumerate(file, start=1):
        consumed += len(raw)
        line = raw.strip()
        if not line:
            continue
        numbers.append(number)
        batch.append(line)
        if len(batch) >= size:
            yield numbers, batch, consumed
            numbers, batch, consumed = [], [], 0
    if batch or consumed:
        yield numbers, batch, consumed


@main.command()
@click.argument("datasets", nargs=-1)
@click.option(
    "--retry-dead-letters",
    is_flag=True,
    help="Refold the customers parked by poison events of DATASETS instead.",
)
@click.pass_obj
def refresh(obj: _Context, datasets: tuple[str, ...], retry_dead_letters: bool) -> None:
    """Fold new events into DATASETS (default: all) now, under their locks.

    A dataset another process is refreshing is skipped (exit 0, listed). A poison event
    (one its fold fails on) is dead-lettered and reported; other events go on.
    """
    with _errors(), obj.open() as store:
        names = store.datasets(list(datasets) or None)
        if retry_dead_letters:
            outcome = {name: store.retry_dead_letters(name) for name in names}
            _emit(
                {n: {"released": r, "still_failing": f} for n, (r, f) in outcome.items()},
                pretty=False,
            )
            if any(f for _, f in outcome.values()):
                sys.exit(1)
            return
        with _progress() as progress:
            task = progress.add_task("refresh", total=None)
            report = store.refresh(
                # All datasets (none named) fold; scores are scored when named.
                list(datasets) or None,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        for name in report.skipped_locked:
            stderr.print(f"[yellow]skipped[/yellow] {name}: another process is refreshing it")
        for name, count in report.dead_letters.items():
            if count:
                stderr.print(
                    f"[red]dead letters[/red] {name}: {count} event(s) failed to fold; "
                    f"see `profilestore status`, then `refresh {name} --retry-dead-letters`"
                )
        _emit(
            {
                "high_water": report.high_water,
                "events_read": report.events_read,
                "events_applied": report.events_applied,
                "sections_written": report.sections_written,
                "dead_letters": report.dead_letters,
                "skipped_locked": report.skipped_locked,
            },
            pretty=False,
        )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def status(obj: _Context, as_json: bool) -> None:
    """Per dataset: cadence, last and next run, lag, running or failed, dead letters."""
    with _errors(), obj.open(read_only=True) as store:
        rows = store.status()
        if as_json:
            _emit(rows, pretty=True)
            return
        table = Table(title=f"profilestore status (log head {store.head()})")
        for column in ("dataset", "cadence", "last run", "next run", "behind", "state"):
            table.add_column(column)
        for row in rows:
            last = row.last_run
            last_text = (
                f"{_when(last.started_at)} {last.status} ({last.trigger})" if last else "never"
            )
            state = "idle"
            if row.running_holder:
                state = f"running ({row.running_holder})"
            if row.failed:
                state = f"[red]failed[/red]: {escape(row.error or '')}"
            if row.dead_letters:
                state += f", [red]{row.dead_letters} dead letter(s)[/red]: " + escape(
                    row.dead_letter_error or ""
                )
            if row.outdated:
                state += (
                    f", [yellow]built by projection version {row.built_version}, code is "
                    f"{row.version}[/yellow]: the worker rebuilds it (or `rebuild {row.dataset}`)"
                )
            table.add_row(
                row.dataset,
                row.cadence,
                last_text,
                _when(row.next_run) if row.next_run else "-",
                f"{row.lag.events_behind} events, {row.lag.seconds_behind:.1f}s",
                state,
            )
        graph = store.identity_status()
        kept = f"kept by {graph.running_holder}" if graph.running_holder else "idle"
        if graph.failed:
            kept = f"[red]failed[/red]: {escape(graph.error or '')}"
        table.caption = (
            f"identity graph: at position {graph.position}, "
            f"{graph.events_behind} log positions behind, {kept}"
        )
        engine = store.trigger_status()
        if engine.enabled:
            running = f"run by {engine.running_holder}" if engine.running_holder else "idle"
            if engine.failed:
                running = f"[red]failed[/red]: {escape(engine.error or '')}"
            dead = (
                f", [red]{engine.dead_letters} dead letter(s)[/red]" if engine.dead_letters else ""
            )
            table.caption += (
                f"\ntrigger engine ({', '.join(engine.enabled)}): at position {engine.position}, "
                f"{engine.events_behind} log positions behind, {running}; {engine.timers} "
                f"timer(s), {engine.pending_deliveries} delivery(ies) pending{dead}"
            )
        console = Console(width=None if sys.stdout.isatty() else 200)
        console.print(table)
        partitioned = store.partition_status()
        if partitioned:
            console.print(_partition_table(partitioned, store.workers()))


def _partition_table(rows: Sequence[Any], workers: Sequence[Any]) -> Table:
    table = Table(title=f"partitions ({len(rows)}; {len(workers)} worker(s) alive)")
    for column in ("partition", "held by", "behind", "least position"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.partition),
            escape(row.holder) if row.holder else "[yellow]nobody[/yellow]",
            f"{row.events_behind} log positions",
            str(min(row.positions.values(), default=0)),
        )
    return table


@main.group()
def partitions() -> None:
    """How customers are split between workers (`worker --partitions auto`)."""


@partitions.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def partitions_show(obj: _Context, as_json: bool) -> None:
    """Per partition: the worker holding it, its lag, and its targets' positions."""
    with _errors(), obj.open(read_only=True) as store:
        rows, workers = store.partition_status(), store.workers()
        if as_json:
            _emit({"partitions": rows, "workers": workers}, pretty=True)
            return
        if not rows:
            stderr.print("this store is not partitioned (schedule.partitions = 1)")
            return
        Console(width=None if sys.stdout.isatty() else 200).print(_partition_table(rows, workers))


@partitions.command("set")
@click.argument("count", type=click.IntRange(1, 1024))
@click.pass_obj
def partitions_set(obj: _Context, count: int) -> None:
    """Split the store into COUNT partitions (every worker stopped; set
    `schedule.partitions` to the same). Safe: each new partition starts from the least
    position of the old ones, and the writes' guards skip what was already done."""
    with _errors(), obj.open() as store:
        previous = store.set_partition_count(count)
        stderr.print(f"partitions: {previous} -> {count}")


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@main.group()
def schedule() -> None:
    """Scheduled refreshes, as the config defines them."""


@schedule.command("list")
@click.option(
    "--count",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="How many upcoming runs to show per dataset.",
)
@click.pass_obj
def schedule_list(obj: _Context, count: int) -> None:
    """Each dataset's cadence, time zone and next runs (catch-up runs are due now)."""
    with _errors(), obj.open(read_only=True) as store:
        now = store.clock()
        rows = []
        for name in store.projections:
            cadence = parse_cadence(store.cadence(name))
            success = store.last_success(name)
            last = success.finished_at if success else None
            due = next_due(cadence, store.timezone, last, now)
            upcoming = fire_times(cadence, store.timezone, due, count - 1) if due else []
            rows.append(
                {
                    "dataset": name,
                    "cadence": cadence.text,
                    "timezone": store.settings.schedule.timezone,
                    "last_success": last,
                    "next_runs": ([due] if due else []) + upcoming,
                }
            )
        _emit(rows, pretty=True)


@main.command()
@click.argument("datasets", nargs=-1)
@click.option(
    "--partitions",
    "share",
    type=click.Choice(["auto"]),
    default=None,
    help="Share the partitions (`schedule.partitions`) with the other workers on the same "
    "stores: each holds ceil(partitions / workers alive), and takes over a dead one's.",
)
@click.pass_obj
def worker(obj: _Context, datasets: tuple[str, ...], share: str | None) -> None:
    """Run the real-time follower and the scheduled refreshes until stopped (Ctrl-C, TERM)."""
    from profilestore.worker import Worker

    stop = _stop_on_signals()  # first: a TERM while starting stops it cleanly once started
    with (
        _errors(),
        obj.open() as store,
        Worker(store, list(datasets) or None, partitioned=share == "auto") as running,
    ):
        _announce(store, running)
        _wait_for_signal(stop)
        stderr.print("stopping: finishing the current batch")


def _announce(store: ProfileStore, running: Any, *, serving: bool = False) -> None:
    text = (
        f"worker {store.holder}: real time {', '.join(running.realtime) or '-'}; "
        f"scheduled {', '.join(running.scheduled) or '-'}; "
        f"triggers {', '.join(store.triggers) or '-'}"
        f"{'; delivering the outbox' if running.delivers else ''}"
        + (
            f"; partitions {', '.join(map(str, running.share.held())) or 'none yet'} of "
            f"{running.share.count}"
            if running.share is not None
            else ""
        )
    )
    if serving:
        # Under `serve`, stderr is the JSON log: this line is one of its lines too.
        logging.getLogger("profilestore.worker").info("%s", text)
    else:
        stderr.print(escape(text))


def _stop_on_signals() -> threading.Event:
    """An event TERM and INT set (instead of ending the process at once)."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def _wait_for_signal(stop: threading.Event | None = None) -> None:
    stop = stop or _stop_on_signals()
    while not stop.wait(1.0):
        pass


@main.command()
@click.option(
    "--role",
    type=click.Choice(["all", "api", "worker"]),
    default="all",
    show_default=True,
    help="all: API, follower and scheduler in one process; api or worker alone.",
)
@click.option("--host", default=None, help="Address to listen on (default: api.host).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port (default: api.port)."
)
@click.pass_obj
def serve(obj: _Context, role: str, host: str | None, port: int | None) -> None:
    """Serve the HTTP API (and keep the datasets fresh) until stopped.

    Several `--role api` processes can share the stores. Workers: with
    `schedule.partitions` above 1, every `--role worker` (or `all`) process shares the
    partitions with the others, as `worker --partitions auto` does; with one partition,
    run one (a second one waits on standby: datasets are locked by whoever refreshes
    them). On TERM or Ctrl-C, requests in flight finish and the follower stops at a batch
    boundary.
    """
    import signal

    import uvicorn

    from profilestore.api import configure_logging, create_app
    from profilestore.api.protocol import MAX_REQUEST_HEAD_BYTES, protocol_class
    from profilestore.worker import Worker

    configure_logging()
    with _errors(), obj.open() as store:
        partitioned = store.settings.schedule.partitions > 1
        if role == "worker":
            with Worker(store, partitioned=partitioned) as running:
                _announce(store, running, serving=True)
                _wait_for_signal()
            return
        background = Worker(store, partitioned=partitioned) if role == "all" else None
        config = uvicorn.Config(
            create_app(store),
            host=host or store.settings.api.host,
            port=store.settings.api.port if port is None else port,
            access_log=False,  # ours logs route templates; uvicorn's would log query strings
            http=protocol_class(),  # refuses malformed HTTP in our JSON error shape
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
            log_config=None,
            timeout_graceful_shutdown=30,
            lifespan="on",
        )
        if background is not None:
            background.start()
            _announce(store, background, serving=True)
        # uvicorn shuts down gracefully on TERM/INT, then re-raises the signal to the
        # handler it found: make that one ours, so the worker is stopped cleanly below.
        stopped: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _: stopped.append(number))
        try:
            uvicorn.Server(config).run()
        finally:
            if background is not None:
                background.stop()


@main.command()
def openapi() -> None:
    """Print the HTTP API's OpenAPI schema (what `openapi.json` in the repository holds)."""
    import tempfile

    from profilestore.api import create_app, openapi_document

    with (
        tempfile.TemporaryDirectory() as home,
        open_store(load_settings(environ={}, home=home)) as store,
    ):
        document = openapi_document(create_app(store))
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(document), indent=2))
    sys.stdout.write("\n")


@main.group("api-key")
def api_key() -> None:
    """API keys for the HTTP API."""


@api_key.command("new")
@click.argument("name")
@click.option(
    "--scopes",
    default="read",
    show_default=True,
    help="Comma-separated: ingest, read, audit, admin.",
)
def api_key_new(name: str, scopes: str) -> None:
    """Print a new random key for NAME and the config entry that grants it SCOPES.

    Only the key's SHA-256 goes into the config; give the key itself to the client.
    """
    import hashlib
    import secrets

    chosen = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in ("ingest", "read", "audit", "admin")]
    if unknown or not chosen:
        raise click.UsageError(f"unknown scopes {unknown}: use ingest, read, audit, admin")
    key = f"ps_{secrets.token_urlsafe(32)}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    quoted = ", ".join(f'"{s}"' for s in chosen)
    sys.stdout.write(f"{key}\n")
    sys.stdout.flush()
    stderr.print(escape("Give the line above to the client. Add to [api] keys in the config:"))
    stderr.print(
        escape(f'  {{ name = "{name}", sha256 = "{digest}", scopes = [{quoted}] }}'),
        highlight=False,
    )


@main.command()
@click.argument("datasets", nargs=-1)
@click.pass_obj
def rebuild(obj: _Context, datasets: tuple[str, ...]) -> None:
    """Rebuild DATASETS (default: all) from the whole log, then swap them in.

    Lookups keep answering from the current documents until the swap. An event that
    cannot be folded is dead-lettered (reported) and the rebuild goes on.
    """
    with _errors(), obj.open() as store:
        names = store.datasets(list(datasets) or None)
        started = time.perf_counter()
        with _progress() as progress:
            task = progress.add_task("rebuild", total=None)
            report = store.rebuild(
                names,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        elapsed = time.perf_counter() - started
        stderr.print(
            f"rebuilt {', '.join(names)} from {report.events_read} events in {elapsed:.1f}s"
        )
        for name, count in report.dead_letters.items():
            if count:
                stderr.print(
                    f"[yellow]dead-lettered[/yellow] {count} event(s) of {name} that could not "
                    f"be folded; see `profilestore status`, then `profilestore refresh {name} "
                    "--retry-dead-letters` once the fold is fixed"
                )


@main.command()
@click.argument("customer_id")
@click.option("--datasets", default=None, help="Comma-separated datasets (default: all).")
@click.option("--pretty/--compact", default=True, help="Indent the JSON (default: pretty).")
@click.option("--freshness", is_flag=True, help="Add how far behind the log head each dataset is.")
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(),
    default=None,
    help="The profile as it was then: events recorded up to this time, refolded.",
)
@click.pass_obj
def profile(
    obj: _Context,
    customer_id: str,
    datasets: str | None,
    pretty: bool,
    freshness: bool,
    as_of: dt.datetime | None,
) -> None:
    """Print the profile of CUSTOMER_ID as JSON."""
    with _errors(), obj.open(read_only=True) as store:
        found = store.profile(customer_id, _split(datasets), as_of=_utc(as_of))
        if freshness:
            _emit(
                {**msgspec.to_builtins(found), "staleness": store.freshness(list(found.sections))},
                pretty=pretty,
            )
        else:
            _emit(found, pretty=pretty)


def _identifier_options(command: F) -> F:
    """One ``--KIND`` option per identifier kind, from their one declaration."""
    for kind in reversed(LOOKUP_KINDS):
        command = click.option(f"--{kind.name}", kind.name, default=None, help=kind.help)(command)
    return command


@main.command()
@_identifier_options
@click.option("--datasets", default=None, help="Comma-separated datasets (default: all).")
@click.option("--pretty/--compact", default=True)
@click.pass_obj
def find(obj: _Context, /, datasets: str | None, pretty: bool, **identifiers: str | None) -> None:
    """Print the profile holding an identifier as JSON."""
    with _errors():
        kind, value = one_identifier(identifiers)
        with obj.open(read_only=True) as store:
            _emit(store.find(kind, value, _split(datasets)), pretty=pretty)


@main.command()
@click.argument("customer_id")
@click.option(
    "--since",
    type=click.DateTime(),
    default=None,
    help="Only events recorded at or after (UTC unless a zone is given).",
)
@click.option(
    "--until", type=click.DateTime(), default=None, help="Only events recorded at or before."
)
@click.option("--types", default=None, help="Comma-separated event types, e.g. cart.item_added.")
@click.pass_obj
def history(
    obj: _Context,
    customer_id: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    types: str | None,
) -> None:
    """Print the events of CUSTOMER_ID, oldest first, as JSON Lines."""
    with _errors(), obj.open(read_only=True) as store:
        events = store.history(
            customer_id, since=_utc(since), until=_utc(until), types=_split(types)
        )
        if not events and not store.history(customer_id):
            raise NotFoundHistory(customer_id)
        out = sys.stdout.buffer
        for event in events:
            out.write(event_json(event) + b"\n")


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


@main.command()
@click.argument("customer_id")
@click.pass_obj
def export(obj: _Context, customer_id: str) -> None:
    """Print everything held on CUSTOMER_ID (every event and the profile) as one JSON
    document, for a data subject access request."""
    with _errors(), obj.open(read_only=True) as store:
        _emit(store.export(customer_id), pretty=True)


@main.command()
@click.option(
    "--sample",
    type=click.IntRange(1),
    default=None,
    help="Check this many random customers (default: --all).",
)
@click.option("--all", "everyone", is_flag=True, help="Check every customer (the default).")
@click.pass_obj
def verify(obj: _Context, sample: int | None, everyone: bool) -> None:
    """Refold customers from the log and diff them with the stored documents.

    Each section is compared up to the log position it records, so a dataset refreshed
    weekly is not drift for lacking newer events. An event a fold raises on is reported
    (customer, dataset, event, error class) and the others are checked. Exit 1 on drift or
    such an event.
    """
    if sample and everyone:
        raise click.UsageError("give --sample N or --all, not both")
    with _errors(), obj.open(read_only=True) as store:
        with _progress() as progress:
            task = progress.add_task("verify", total=None)
            report = store.verify(
                sample=sample,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        for name, count in report.drift_by_dataset.items():
            first = next(d for d in report.drift if d.dataset == name)
            stderr.print(
                f"[red]drift[/red] {name}: {count} section(s); first: customer "
                + escape(
                    f"{first.customer_id} at {first.path}: stored "
                    f"{first.stored!r}, log gives {first.expected!r}"
                )
            )
        for failure in report.failures[:100]:
            stderr.print(
                "[red]cannot fold[/red] "
                + escape(
                    f"{failure.dataset}: customer {failure.customer_id}, event "
                    f"{failure.event_id} ({failure.event_type}, log position "
                    f"{failure.notification_id}): {failure.error}"
                )
            )
        _emit(
            {
                "ok": report.ok,
                "customers_checked": report.customers_checked,
                "sections_checked": report.sections_checked,
                "drift_by_dataset": report.drift_by_dataset,
                "drift": report.drift[:100],
                "failures": report.failures[:100],
            },
            pretty=True,
        )
        if not report.ok:
            sys.exit(1)


@main.command()
@click.argument("customer_id")
@click.option("--channel", required=True, help="email, sms, phone, push, post, social or web.")
@click.option("--purpose", default="marketing", show_default=True)
@click.pass_obj
def consent(obj: _Context, customer_id: str, channel: str, purpose: str) -> None:
    """May we contact CUSTOMER_ID on CHANNEL for PURPOSE now? Prints the decision and the
    event that made it; unknown means no. Exit 0 if allowed, 1 if not."""
    with _errors(), obj.open(read_only=True) as store:
        decision = store.may_contact(customer_id, channel, purpose)
        _emit(decision, pretty=True)
    if not decision.allowed:
        sys.exit(1)


@main.command()
@click.argument("customer_id")
@click.option(
    "--request-id",
    required=True,
    help="The erasure request's id (from your ticketing system): done once per id.",
)
@click.pass_obj
def forget(obj: _Context, customer_id: str, request_id: str) -> None:
    """Erase CUSTOMER_ID on request (README: Privacy): destroy the data keys of every key of
    their profile, delete everything derived, refuse their events from now on, and print
    the erasure receipt (no personal data). Running it again with the same request id
    prints the same receipt."""
    with _errors(), obj.open() as store:
        receipt = store.forget(customer_id, request_id=request_id)
        _emit(receipt, pretty=True)
    if receipt.plaintext.found or not receipt.chain_intact:
        sys.exit(1)


@main.group("log")
def log_group() -> None:
    """The event log itself."""


@log_group.command("encrypt")
@click.argument("target_url")
@click.option("--postgres-schema", default="", help="The target's schema (PostgreSQL).")
@click.pass_obj
def log_encrypt(obj: _Context, target_url: str, postgres_schema: str) -> None:
    """Copy this store's log, in order, into a new empty log at TARGET_URL, encrypted per
    customer (to move a store created before encryption). Then set event_log.url to
    TARGET_URL and run `profilestore rebuild`."""
    with _errors(), obj.open(read_only=True) as store, _progress() as bar:
        task = bar.add_task("copying", total=None)
        copied = store.encrypt_into(
            target_url,
            postgres_schema=postgres_schema,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    click.echo(f"copied {copied} events into an encrypted log; now set event_log.url and rebuild")


@main.group()
def keys() -> None:
    """Per-customer data keys and the key-encryption key that wraps them."""


@keys.command("status")
@click.pass_obj
def keys_status(obj: _Context) -> None:
    """Whether the log is encrypted, the current KEK's id, and how many data keys are live
    and destroyed."""
    with _errors(), obj.open(read_only=True) as store:
        _emit(store.key_status(), pretty=True)


@keys.command("rotate")
@click.pass_obj
def keys_rotate(obj: _Context) -> None:
    """Re-wrap every data key with the configured KEK (after changing
    privacy.key_encryption_key and listing the old one in
    privacy.previous_key_encryption_keys); no event is touched."""
    with _errors(), obj.open() as store:
        count = store.rotate_keys()
    click.echo(f"re-wrapped {count} keys with the current key-encryption key")


@keys.command("new-kek")
def keys_new_kek() -> None:
    """Print a new random key-encryption key (base64) to keep in a secret store or file."""
    from profilestore.keys import new_kek_text

    click.echo(new_kek_text())


@main.group()
def triggers() -> None:
    """Triggers: what they are, what they decided, running them now."""


@triggers.command("list")
@click.pass_obj
def triggers_list(obj: _Context) -> None:
    """Every configured trigger: enabled or not, channel, purpose, what it does."""
    with _errors(), obj.open(read_only=True) as store:
        _emit(store.trigger_catalogue(), pretty=True)


@triggers.command("log")
@click.argument("customer_id")
@click.pass_obj
def triggers_log(obj: _Context, customer_id: str) -> None:
    """Every trigger decision for CUSTOMER_ID (every key of a merged profile), oldest
    first, as JSON Lines: fired, duplicate, deferred or waiting until when, suppressed
    and why, cancelled, failed."""
    with _errors(), obj.open(read_only=True) as store:
        for outcome in store.trigger_log(customer_id):
            _emit(outcome, pretty=False)


@triggers.command("run")
@click.pass_obj
def triggers_run(obj: _Context) -> None:
    """Decide the enabled triggers on the events recorded since the last run, and the
    timers due, now (the worker does this continuously)."""
    with _errors(), obj.open() as store:
        report = store.run_triggers()
        if report.skipped_locked:
            stderr.print("[yellow]skipped[/yellow]: another process runs the trigger engine")
        _emit(
            {
                "high_water": report.high_water,
                "events_read": report.events_read,
                "outcomes": report.outcomes,
                "skipped_locked": report.skipped_locked,
            },
            pretty=False,
        )


@main.group()
def experiments() -> None:
    """Experiments on triggers: variants and a holdout, and how they convert."""


@experiments.command("report")
@click.argument("name")
@click.pass_obj
def experiments_report(obj: _Context, name: str) -> None:
    """Per variant and the holdout of experiment NAME: customers, conversions (an order
    within the window after the firing), the rate and its 95% interval."""
    with _errors(), obj.open(read_only=True) as store:
        _emit(store.experiment_report(name), pretty=True)


@main.group()
def scores() -> None:
    """Lifecycle and journey stages, 4I engagement, RFM, value tier, channel preference and
    predicted lifetime value, in every profile's ``scores`` section."""


@scores.command("fit")
@click.pass_obj
def scores_fit(obj: _Context) -> None:
    """Refit the population-wide parts (quintiles, percentiles, the lifetime-value model),
    then score every profile with the new fit: profiles switch to it together."""
    with _errors(), obj.open() as store:
        report = store.fit_scores()
        fitted = store.score_fit()
    _emit(
        {
            "fit": fitted,
            "sections_written": report.sections_written.get("scores", 0),
        },
        pretty=True,
    )


@scores.command("refresh")
@click.pass_obj
def scores_refresh(obj: _Context) -> None:
    """Score every profile now with the current fit (fitting one if there is none)."""
    with _errors(), obj.open() as store:
        report = store.score(required=True)
        summary = store.scores_summary()
    _emit(
        {"sections_written": report.sections_written.get("scores", 0), "summary": summary},
        pretty=True,
    )


@scores.command("summary")
@click.pass_obj
def scores_summary(obj: _Context) -> None:
    """Customers per lifecycle stage, journey stage and value tier, the 4I and predicted
    value distributions, and the movement since the previous run."""
    with _errors(), obj.open(read_only=True) as store:
        _emit(store.scores_summary(), pretty=True)


@scores.command("explain")
@click.argument("customer_id")
@click.pass_obj
def scores_explain(obj: _Context, customer_id: str) -> None:
    """CUSTOMER_ID's scores with the rule that placed them, the facts it used, and the
    fit (version, parameters, diagnostics) they were computed with."""
    with _errors(), obj.open(read_only=True) as store:
        _emit(store.explain_scores(customer_id), pretty=True)


@scores.command("report")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default="scores-report",
    show_default=True,
    help="Directory the PNG plots are written to.",
)
@click.pass_obj
def scores_report(obj: _Context, out: str) -> None:
    """PNG plots of the latest scoring run (stages, tiers, 4I, predicted value) and of
    the stage counts run by run."""
    from profilestore.scores_report import render

    with _errors(), obj.open(read_only=True) as store:
        summaries = store.score_summaries()
        if not summaries:
            store.scores_summary()  # the error saying nothing was scored yet
        for path in render(summaries, Path(out)):
            stderr.print(f"wrote {path}")


@main.group()
def outbox() -> None:
    """Fired messages on their way: pending, delivered, dead letters, redrive."""


@outbox.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "dead", "delivered"]),
    default="pending",
    show_default=True,
)
@click.pass_obj
def outbox_list(obj: _Context, status: str) -> None:
    """The deliveries with STATUS, oldest first, as JSON Lines (attempts, last error)."""
    with _errors(), obj.open(read_only=True) as store:
        for delivery in store.outbox(status):  # type: ignore[arg-type]
            _emit(delivery, pretty=False)


@outbox.command("retry")
@click.argument("message_ids", nargs=-1)
@click.pass_obj
def outbox_retry(obj: _Context, message_ids: tuple[str, ...]) -> None:
    """Queue dead letters again (MESSAGE_IDS, or all), enabling their endpoints again;
    the worker delivers them under the same message ids."""
    with _errors(), obj.open() as store:
        moved = store.redrive(list(message_ids) or None)
        _emit({"redriven": moved}, pretty=False)
        if message_ids and not moved:
            stderr.print("[yellow]no dead letter[/yellow] has these message ids")
            sys.exit(1)


@main.group()
def identity() -> None:
    """Who a customer is: the keys of a profile, and the links that join them."""


def _operator(actor: str | None) -> str:
    if actor:
        return actor
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@identity.command("explain")
@click.argument("customer_id")
@click.option("--pretty/--compact", default=True)
@click.pass_obj
def identity_explain(obj: _Context, customer_id: str, pretty: bool) -> None:
    """Print the profile CUSTOMER_ID belongs to: its keys, identifiers and every link
    (active, retracted, refused) with its rule or operator, evidence and time."""
    with _errors(), obj.open(read_only=True) as store:
        _emit(store.explain(customer_id), pretty=pretty)


_ACTOR = click.option(
    "--actor", default=None, help="Who decides, for the record (default: cli:<user name>)."
)
_REASON = click.option("--reason", required=True, help="Why, for the record.")


@identity.command("merge")
@click.argument("key")
@click.argument("other")
@_REASON
@_ACTOR
@click.pass_obj
def identity_merge(obj: _Context, key: str, other: str, reason: str, actor: str | None) -> None:
    """Make customer keys KEY and OTHER one profile (idempotent). Prints the profile id."""
    with _errors(), obj.open() as store:
        result = store.link(key, other, actor=_operator(actor), reason=reason)
        _emit(result, pretty=False)
        stderr.print(
            "merged" if result.appended else "already one profile", escape(result.profile_id)
        )


@identity.command("unmerge")
@click.argument("key")
@click.argument("other", required=False)
@_REASON
@_ACTOR
@click.pass_obj
def identity_unmerge(
    obj: _Context, key: str, other: str | None, reason: str, actor: str | None
) -> None:
    """Retract the links between KEY and OTHER; without OTHER, split KEY out of its
    profile. Rules will not link them again (a merge by hand still can). Idempotent."""
    with _errors(), obj.open() as store:
        result = store.unlink(key, other, actor=_operator(actor), reason=reason)
        _emit(result, pretty=False)
        stderr.print("unmerged" if result.appended else "already apart", escape(result.profile_id))


@main.group()
def audit() -> None:
    """Tamper evidence: digests of the log and their verification."""


@audit.command("erasures")
@click.pass_obj
def audit_erasures(obj: _Context) -> None:
    """Print every erasure receipt (JSON Lines, oldest first): request id, times, counts of
    what was destroyed and deleted, the plaintext search and the chain check."""
    with _errors(), obj.open(read_only=True) as store:
        for receipt in store.erasures():
            _emit(receipt, pretty=False)


@audit.command("digest")
@click.option(
    "--key",
    "key_file",
    type=click.File("rb"),
    default=None,
    help="Ed25519 private key (PEM) to sign with; keep it away from the stores.",
)
@click.pass_obj
def audit_digest(obj: _Context, key_file: IO[bytes] | None) -> None:
    """Print a digest (Merkle root over every stream head, position, time) as JSON."""
    from profilestore.audit import load_private_key

    with _errors(), obj.open(read_only=True) as store:
        key = load_private_key(key_file.read()) if key_file else None
        _emit(store.auditor().digest(key), pretty=True)


@audit.command("verify")
@click.option(
    "--digest",
    "digest_file",
    type=click.File("rb"),
    default=None,
    help="A digest written by `audit digest`.",
)
@click.option(
    "--public-key",
    "public_file",
    type=click.File("rb"),
    default=None,
    help="Ed25519 public key (PEM) the digest must be signed with.",
)
@click.pass_obj
def audit_verify(
    obj: _Context, digest_file: IO[bytes] | None, public_file: IO[bytes] | None
) -> None:
    """Recompute every hash chain and, with --digest, compare with it. Exit 1 on findings."""
    from profilestore.audit import Digest, load_public_key

    with _errors(), obj.open(read_only=True) as store:
        digest = msgspec.json.decode(digest_file.read(), type=Digest) if digest_file else None
        if public_file is not None and digest is None:
            raise click.UsageError("--public-key needs --digest")
        public = load_public_key(public_file.read()) if public_file else None
        if digest is not None and digest.signature and public is None:
            stderr.print(
                "[yellow]note[/yellow] the digest is signed: give --public-key to "
                "check the signature"
            )
        report = store.auditor().verify(digest, public)
        _emit(report, pretty=True)
        stderr.print(
            f"{'ok' if report.ok else '[red]TAMPERED[/red]'}: {report.events_checked} events "
            f"in {report.streams_checked} streams checked"
            + (f", digest at position {report.position}" if report.digest_checked else "")
            + (", signature checked" if report.signature_checked else "")
        )
        if not report.ok:
            sys.exit(1)


@audit.command("keygen")
@click.argument("prefix", type=click.Path(dir_okay=False))
def audit_keygen(prefix: str) -> None:
    """Write a new Ed25519 key pair: PREFIX.key (private, mode 600) and PREFIX.pub."""
    import os

    from profilestore.audit import new_key_pair

    private, public = new_key_pair()
    descriptor = os.open(f"{prefix}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(private)
    Path(f"{prefix}.pub").write_bytes(public)
    stderr.print(f"wrote {prefix}.key (keep it away from the stores) and {prefix}.pub")


@main.command("datasets")
@click.pass_obj
def list_datasets(obj: _Context) -> None:
    """List the configured datasets with their cadence, retention and freshness."""
    with _errors(), obj.open(read_only=True) as store:
        rows = []
        lags = store.freshness()
        for name, projection in store.projections.items():
            lag = lags[name]
            rows.append(
                {
                    "dataset": name,
                    "projection": store.settings.datasets[name].projection,
                    "refresh": store.cadence(name),
                    "retention": projection.retention,
                    "position": lag.position if lag.refreshed_at else 0,
                    "refreshed_at": lag.refreshed_at,
                }
            )
        _emit(rows, pretty=True)


@main.group("documents")
def documents_group() -> None:
    """The document store's layout."""


@documents_group.command("shard-plan")
@click.option(
    "--database",
    default=None,
    help="Database to shard (default: the one documents.url names, else profilestore).",
)
@click.pass_obj
def shard_plan(obj: _Context, database: str | None) -> None:
    """Print the mongosh script that shards a MongoDB document store: the shard keys and
    indexes of every collection (run it on mongos before the first process opens it)."""
    from profilestore.mongo_layout import mongosh_script

    with _errors():
        documents = obj.settings.documents
        if database is None:
            database = "profilestore"
            if documents.url.startswith("mongodb"):
                from pymongo.uri_parser import parse_uri

                database = parse_uri(documents.url).get("database") or database
        derived = [n for n, p in load_projections(obj.settings).items() if p.derived]
        click.echo(mongosh_script(database, documents.collection, derived), nl=False)


@main.command()
@click.option("--customers", type=click.IntRange(1), default=5000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--events-per-customer", type=click.FloatRange(1), default=41.0, show_default=True)
@click.pass_obj
def demo(obj: _Context, customers: int, seed: int, events_per_customer: float) -> None:
    """Generate a synthetic population, ingest it, refresh, and show a profile and figures."""
    from profilestore.demo import run_demo

    with _errors(), obj.open() as store:
        run_demo(
            store,
            customers=customers,
            seed=seed,
            events_per_customer=events_per_customer,
            console=stderr,
            emit=lambda value: _emit(value, pretty=True),
        )


if __name__ == "__main__":  # pragma: no cover
    main()
