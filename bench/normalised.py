"""The "rows and records" baseline: profile data in normalised SQL tables, assembled per read.

profilestore keeps one array-shaped document per customer. The conventional alternative,
built here in SQLite and in PostgreSQL, stores the same data in normalised tables and
assembles a customer's profile at read time. The benchmark report times
:meth:`NormalisedSQLite.profile` and :meth:`NormalisedPostgres.profile` against the
document store's read, after :func:`assert_same` has checked that both give the same data.

Schema. It is derived from the projections' section types with ``msgspec.inspect``, so it
follows any dataset:

- a dataset gets a table ``n_<dataset>``: ``customer_id`` (primary key) and one typed column
  per scalar field of its section. The row exists when the customer has the section;
- an array of Structs gets a child table named by its field path (``Orders.recent`` is
  ``n_orders__recent``, its ``Order.items`` is ``n_orders__recent__items``), keyed by
  ``customer_id`` and one ordinal per array level on the path (``parent_ord``, ``ord``),
  which gives the rows back in document order;
- a nested Struct (``Attributes.location: Location | None``) is a child table with at most
  one row per parent row (none for ``None``); an array of scalars (``tuple[str, ...]``) is
  a child table with a ``value`` column;
- column types, SQLite / PostgreSQL: str and string Literals TEXT / text, int INTEGER /
  bigint, float REAL / double precision, bool INTEGER / boolean, Decimal TEXT / numeric,
  aware datetime TEXT (msgspec's ISO form) / timestamptz, date TEXT / date. A union of
  scalar types (``str | int | float | bool | None``) is TEXT holding the value's JSON:
  the one form that keeps an int, a float and a bool apart in both databases;
- ``n_lookup_keys (key, customer_id)`` holds the identifier keys :meth:`find` looks up,
  computed by the projections' own ``lookup_keys``.

Every primary key starts with ``customer_id``, so each query of a read is one index range
scan (in SQLite the tables are ``WITHOUT ROWID``: rows are stored in key order). A field
shape the mapping does not cover (dicts, fixed-size or optional arrays, unions of Structs,
naive datetimes, ...) fails at construction with :class:`UnsupportedShape`, naming it.

Cost of a read. One query per table: with the default datasets 28 tables, from two for
``consents`` (``n_consents`` and ``n_consents__consents``) to five for ``carts``.
SQLite runs them one after the other and skips the tables under a parent that returned no
rows (a customer without orders costs one query for ``orders``, not four: 16 to 27 queries
a read in the synthetic population); PostgreSQL sends all 28 in one round trip (pipeline
mode). The rows are then assembled into the sections' JSON form, the one
:func:`json_form` gives (Decimals, datetimes and dates as strings), which is what the
comparison and an API response need. :meth:`find` is one query on ``n_lookup_keys``.

Fidelity. Both databases give the stored values back exactly, with two exceptions in
PostgreSQL, which :func:`assert_same` would report: timestamptz keeps the instant but not
the UTC offset (datetimes read back in UTC; the synthetic population is all UTC), and
numeric does not keep exponent notation (``Decimal("1E+1")`` reads back as ``"10"``).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402
import msgspec.inspect as mi  # noqa: E402
import psycopg  # noqa: E402

from profilestore.projection import Projection  # noqa: E402
from profilestore.store import ProfileStore  # noqa: E402

Kind = Literal["str", "int", "float", "bool", "decimal", "datetime", "date", "json"]
Shape = Literal["root", "single", "array", "values"]
"""A dataset's table, a nested Struct, an array of Structs, an array of scalars."""
Row = Sequence[Any]
Sections = Mapping[str, msgspec.Struct]
JsonProfile = dict[str, dict[str, Any]]

LOOKUP_TABLE = "n_lookup_keys"
POSTGRES_MAX_NAME = 63
"""PostgreSQL truncates longer identifiers, which could make two tables one."""

_SCALAR_KINDS: dict[type[mi.Type], Kind] = {
    mi.StrType: "str",
    mi.IntType: "int",
    mi.FloatType: "float",
    mi.BoolType: "bool",
    mi.DecimalType: "decimal",
    mi.DateType: "date",
}
SQLITE_TYPES: dict[Kind, str] = {
    "str": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "bool": "INTEGER",
    # TEXT, not NUMERIC: SQLite's NUMERIC affinity would turn "9.90" into the float 9.9.
    "decimal": "TEXT",
    "datetime": "TEXT",
    "date": "TEXT",
    "json": "TEXT",
}
POSTGRES_TYPES: dict[Kind, str] = {
    "str": "text",
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "decimal": "numeric",
    "datetime": "timestamptz",
    "date": "date",
    # text, not jsonb: jsonb keeps numbers as numeric, so a float 1e20 would come back an int.
    "json": "text",
}


class UnsupportedShape(TypeError):
    """A section field whose type the normalised schema has no mapping for."""


# --- schema ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    """The field's name in the section's JSON form (its encode name)."""
    name: str
    """The SQL column: the field's Python name."""
    kind: Kind
    nullable: bool


@dataclass(eq=False)
class Table:
    """One normalised table; ``eq=False`` keeps it hashable by identity (a dict key)."""

    name: str
    dataset: str
    shape: Shape
    key: str
    """The field of the parent object its rows fill ("" for a dataset's table)."""
    ords: tuple[str, ...]
    """Ordinal columns after ``customer_id``, outermost array first."""
    columns: tuple[Column, ...] = ()
    children: list[Table] = field(default_factory=list)

    @property
    def parent_ords(self) -> int:
        """How many of :attr:`ords` identify the parent row (all but its own ordinal)."""
        return len(self.ords) - (self.shape in ("array", "values"))

    def walk(self) -> Iterator[Table]:
        """This table and every table under it, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()


def derive_schema(projections: Mapping[str, Projection[Any]]) -> list[Table]:
    """The dataset tables (each with its child tables) for the projections' sections."""
    roots = []
    for dataset, projection in projections.items():
        if projection.derived:
            continue  # computed by a job (scores), never folded: nothing to compare
        root = Table(name=f"n_{dataset}", dataset=dataset, shape="root", key="", ords=())
        _describe(root, mi.type_info(projection.section), dataset)
        roots.append(root)
    names = [LOOKUP_TABLE] + [t.name for root in roots for t in root.walk()]
    for name in names:
        if names.count(name) > 1:
            raise UnsupportedShape(f"two tables would be named {name!r}")
        if len(name) > POSTGRES_MAX_NAME:
            raise UnsupportedShape(
                f"table name {name!r} is longer than PostgreSQL's {POSTGRES_MAX_NAME} characters"
            )
    return roots


def _describe(table: Table, info: mi.Type, where: str) -> None:
    """Fill ``table``'s columns and children from the Struct type ``info``."""
    if not isinstance(info, mi.StructType):
        raise UnsupportedShape(f"{where}: expected a Struct, got {info!r}")
    config = info.cls.__struct_config__
    if info.array_like or info.tag_field is not None or config.omit_defaults:
        # Each changes the JSON form (a list, an extra tag key, missing keys), which the
        # assembled dicts do not reproduce.
        raise UnsupportedShape(
            f"{where}: {info.cls.__qualname__} is array_like, tagged or omits defaults"
        )
    reserved = {"customer_id", *table.ords}
    columns = []
    for f in info.fields:
        path = f"{where}.{f.name}"
        options = _options(f.type)
        nullable = any(isinstance(o, mi.NoneType) for o in options)
        rest = [o for o in options if not isinstance(o, mi.NoneType)]
        kind = _scalar_kind(options)
        if kind is not None:
            if f.name in reserved:
                raise UnsupportedShape(f"{path}: the column name clashes with a key column")
            # A JSON column stores None as "null", so it never holds SQL NULL.
            columns.append(Column(f.encode_name, f.name, kind, nullable and kind != "json"))
        elif len(rest) == 1 and isinstance(rest[0], mi.StructType):
            child = _child(table, f, "single")
            _describe(child, rest[0], path)
        elif len(rest) == 1 and not nullable and isinstance(rest[0], mi.VarTupleType | mi.ListType):
            item = _options(rest[0].item_type)
            if len(item) == 1 and isinstance(item[0], mi.StructType):
                child = _child(table, f, "array")
                _describe(child, item[0], f"{path}[]")
            elif (item_kind := _scalar_kind(item)) is not None:
                item_nullable = item_kind != "json" and any(
                    isinstance(o, mi.NoneType) for o in item
                )
                child = _child(table, f, "values")
                child.columns = (Column("value", "value", item_kind, item_nullable),)
            else:
                raise UnsupportedShape(f"{path}[]: unsupported array item type {item!r}")
        else:
            raise UnsupportedShape(f"{path}: unsupported field type {f.type!r}")
    table.columns = tuple(columns)


def _options(t: mi.Type) -> list[mi.Type]:
    """The alternatives of a (possibly annotated) type: several for a union, else one."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        return [o.type if isinstance(o, mi.Metadata) else o for o in t.types]
    return [t]


def _scalar_kind(options: Sequence[mi.Type]) -> Kind | None:
    """The column kind for a scalar type or a union of scalar types, else None."""
    kinds: list[Kind] = []
    for option in options:
        if isinstance(option, mi.NoneType):
            continue
        if isinstance(option, mi.DateTimeType):
            # Only aware datetimes: naive ones have no timestamptz to go to and back from.
            if not option.tz:
                return None
            kinds.append("datetime")
        elif isinstance(option, mi.LiteralType):
            values = option.values
            if all(isinstance(v, str) for v in values):
                kinds.append("str")
            else:
                kinds.append("int" if all(isinstance(v, int) for v in values) else "json")
        elif type(option) in _SCALAR_KINDS:
            kinds.append(_SCALAR_KINDS[type(option)])
        else:
            return None
    if not kinds:
        return None
    return kinds[0] if len(kinds) == 1 else "json"


def _child(parent: Table, f: mi.Field, shape: Shape) -> Table:
    own = shape != "single"
    # A child row is identified by its parent row's ordinals, plus its own index in an array.
    ords = _ordinal_names(len(parent.ords) + own, own)
    child = Table(
        name=f"{parent.name}__{f.name}",
        dataset=parent.dataset,
        shape=shape,
        key=f.encode_name,
        ords=ords,
    )
    parent.children.append(child)
    return child


def _ordinal_names(count: int, own: bool) -> tuple[str, ...]:
    """``(..., parent2_ord, parent_ord, ord)``: ``ord`` is the row's own array index."""
    inner = ["ord"] if own else []
    inner += ["parent_ord" if i == 0 else f"parent{i + 1}_ord" for i in range(count - len(inner))]
    return tuple(reversed(inner))


def _quote(name: str) -> str:
    # Field names such as "at", "open" or "value" are keywords in one database or the other.
    return '"' + name.replace('"', '""') + '"'


# --- reading ----------------------------------------------------------------------------------


def _sqlite_bool(value: Any) -> Any:
    return value if value is None else bool(value)


_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def _json_encode(value: Any) -> str:
    return _JSON_ENCODER.encode(value).decode()


def _json_decode(value: str) -> Any:
    return _JSON_DECODER.decode(value)


@dataclass(eq=False)
class _Plan:
    """How one table is read and assembled, with everything per row computed up front."""

    table: Table
    select: str
    keys: tuple[str, ...]
    """The data columns' JSON keys, in select order; the selected ordinals follow them."""
    converters: tuple[tuple[str, Callable[[Any], Any]], ...]
    typed: bool
    """Whether rows hold Decimals, datetimes or dates, which PostgreSQL returns as objects."""
    arrays: tuple[str, ...]
    singles: tuple[str, ...]
    children: list[_Plan]

    def item(self, row: Row) -> Any:
        """The row's JSON value: a dict with empty slots for its children, or a scalar."""
        if self.table.shape == "values":
            value = row[0]
            for _, convert in self.converters:
                value = convert(value)
            return value
        # zip stops at the data columns, leaving out the ordinals selected after them.
        item = dict(zip(self.keys, row, strict=False))
        for key, convert in self.converters:
            item[key] = convert(item[key])
        for key in self.arrays:
            item[key] = []
        for key in self.singles:
            item[key] = None
        return item

    def fill(self, parents: Mapping[tuple[Any, ...], dict[str, Any]], rows_of: RowsOf) -> None:
        """Attach this table's rows to their parent rows, then fill the tables under it."""
        rows = rows_of(self)
        if not rows:
            return  # nor rows under it: its children are not read
        table = self.table
        if table.parent_ords == 0 and not self.children:
            # The common case: one parent (the section, or a nested Struct of it) and no
            # rows under these, so no ordinal is read or matched.
            parent = parents[()]
            if table.shape == "single":
                parent[table.key] = self.item(rows[0])
            else:
                parent[table.key].extend([self.item(row) for row in rows])
            return
        start = len(self.keys)
        parent_end = start + table.parent_ords
        own_end = start + len(table.ords)
        index: dict[tuple[Any, ...], dict[str, Any]] = {}
        indexed = bool(self.children)
        for row in rows:
            item = self.item(row)
            parent = parents[tuple(row[start:parent_end])]
            if table.shape == "single":
                parent[table.key] = item
            else:
                parent[table.key].append(item)
            if indexed:
                index[tuple(row[start:own_end])] = item
        for child in self.children:
            child.fill(index, rows_of)

    def walk(self) -> Iterator[_Plan]:
        """This plan and every plan under it, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()


RowsOf = Callable[[_Plan], Sequence[Row]]


def json_form(section: msgspec.Struct) -> Any:
    """A section in JSON form: what ``profile`` returns and is compared against.

    Decoded from the section's JSON, as profilestore serves it: tuples become lists, and
    Decimals, datetimes and dates strings (``msgspec.to_builtins`` would keep the tuples).
    """
    return _JSON_DECODER.decode(_JSON_ENCODER.encode(section))


# --- the stores -------------------------------------------------------------------------------


class _Normalised:
    """What both databases share: the schema, the bulk-load rows and assembling a read."""

    placeholder = "?"
    column_types: Mapping[Kind, str] = SQLITE_TYPES
    table_options = ""
    read_converters: Mapping[Kind, Callable[[Any], Any]] = {}
    """Per column kind, how a value the driver returns becomes its JSON form."""

    def __init__(
        self, projections: Mapping[str, Projection[Any]], *, chunk_customers: int = 2_000
    ) -> None:
        self.projections = dict(projections)
        self.chunk_customers = chunk_customers
        """Customers flattened and written per transaction: bounds a load's memory."""
        self.roots = {root.dataset: root for root in derive_schema(self.projections)}
        self.tables = [t for root in self.roots.values() for t in root.walk()]
        self.plans = [self._plan(root) for root in self.roots.values()]
        self._lookup_keys = {
            name: p.lookup_keys for name, p in self.projections.items() if p.lookup_keys
        }

    def ref(self, name: str) -> str:
        """A table name as SQL (PostgreSQL qualifies it with the schema)."""
        return _quote(name)

    def ddl(self) -> list[str]:
        """CREATE TABLE statements for every table, parents first."""
        types = self.column_types
        statements = []
        for table in self.tables:
            columns = [f"customer_id {types['str']} NOT NULL"]
            columns += [f"{_quote(o)} {types['int']} NOT NULL" for o in table.ords]
            columns += [
                f"{_quote(c.name)} {types[c.kind]}{'' if c.nullable else ' NOT NULL'}"
                for c in table.columns
            ]
            key = ", ".join(["customer_id", *map(_quote, table.ords)])
            statements.append(
                f"CREATE TABLE {self.ref(table.name)} ({', '.join(columns)}, "
                f"PRIMARY KEY ({key})){self.table_options}"
            )
        statements.append(
            f"CREATE TABLE {self.ref(LOOKUP_TABLE)} (key {types['str']} NOT NULL, "
            f"customer_id {types['str']} NOT NULL, PRIMARY KEY (key, customer_id))"
            f"{self.table_options}"
        )
        return statements

    @staticmethod
    def column_list(table: Table) -> str:
        """The table's columns in the order of the rows a load writes."""
        names = ["customer_id", *table.ords, *(c.name for c in table.columns)]
        return ", ".join(map(_quote, names))

    def _plan(self, table: Table) -> _Plan:
        selected = [_quote(c.name) for c in table.columns]
        # Ordinals are read only where rows must be matched to parent or child rows.
        if table.parent_ords or table.children:
            selected += map(_quote, table.ords)
        sql = (
            f"SELECT {', '.join(selected) or '1'} FROM {self.ref(table.name)} "
            f"WHERE customer_id = {self.placeholder}"
        )
        if table.ords:
            sql += f" ORDER BY {', '.join(map(_quote, table.ords))}"
        converters: list[tuple[str, Callable[[Any], Any]]] = []
        for column in table.columns:
            if column.kind == "json":
                converters.append((column.key, _json_decode))
            elif column.kind in self.read_converters:
                converters.append((column.key, self.read_converters[column.kind]))
        return _Plan(
            table=table,
            select=sql,
            keys=tuple(c.key for c in table.columns),
            converters=tuple(converters),
            typed=any(c.kind in ("decimal", "datetime", "date") for c in table.columns),
            arrays=tuple(c.key for c in table.children if c.shape != "single"),
            singles=tuple(c.key for c in table.children if c.shape == "single"),
            children=[self._plan(child) for child in table.children],
        )

    def _assemble(self, rows_of: RowsOf) -> JsonProfile | None:
        """The profile from the rows ``rows_of`` gives per table; None if it has no section."""
        profile: JsonProfile = {}
        for plan in self.plans:
            rows = rows_of(plan)
            if not rows:
                continue  # the customer has no such section: its child tables are not read
            section = plan.item(rows[0])
            profile[plan.table.dataset] = section
            for child in plan.children:
                child.fill({(): section}, rows_of)
        return profile or None

    def _chunks(
        self, rows_source: Iterable[tuple[str, Sections]]
    ) -> Iterator[tuple[int, dict[Table, list[Row]], list[Row]]]:
        """Per ``chunk_customers`` customers: how many, their rows by table, their lookup keys."""
        source = iter(rows_source)
        while chunk := list(islice(source, self.chunk_customers)):
            rows: dict[Table, list[Row]] = {t: [] for t in self.tables}
            keys: list[Row] = []
            for customer_id, sections in chunk:
                for dataset, section in sections.items():
                    root = self.roots.get(dataset)
                    if root is None:
                        raise KeyError(f"{customer_id}: dataset {dataset!r} has no projection")
                    _flatten(root, json_form(section), customer_id, (), rows)
                    lookup_keys = self._lookup_keys.get(dataset)
                    if lookup_keys is not None:
                        # PRIMARY KEY (key, customer_id): a key once per customer.
                        keys += [(k, customer_id) for k in dict.fromkeys(lookup_keys(section))]
            yield len(chunk), rows, keys


def _flatten(
    table: Table, value: Any, customer_id: str, ords: tuple[int, ...], rows: dict[Table, list[Row]]
) -> None:
    """Append the rows of ``value`` (a JSON-form object of ``table``) and of its children."""
    if table.shape == "values":
        kind = table.columns[0].kind
        rows[table].append((customer_id, *ords, _json_encode(value) if kind == "json" else value))
        return
    rows[table].append(
        (
            customer_id,
            *ords,
            *(
                _json_encode(value[c.key]) if c.kind == "json" else value[c.key]
                for c in table.columns
            ),
        )
    )
    for child in table.children:
        nested = value[child.key]
        if child.shape == "single":
            if nested is not None:
                _flatten(child, nested, customer_id, ords, rows)
        else:
            for i, item in enumerate(nested):
                _flatten(child, item, customer_id, (*ords, i), rows)


class NormalisedSQLite(_Normalised):
    """The normalised tables in one SQLite file, run as the document store runs its own."""

    read_converters = {"bool": _sqlite_bool}
    # Rows stored in primary-key order: a customer's rows of a table are adjacent.
    table_options = " WITHOUT ROWID"

    def __init__(
        self,
        projections: Mapping[str, Projection[Any]],
        path: str | Path,
        *,
        chunk_customers: int = 2_000,
    ) -> None:
        super().__init__(projections, chunk_customers=chunk_customers)
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, isolation_level=None, cached_statements=256)
        # The same settings as sqlite_documents.py, so the two files are compared like for like.
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._inserts = {
            t: f"INSERT INTO {self.ref(t.name)} ({self.column_list(t)}) "
            f"VALUES ({', '.join('?' * (1 + len(t.ords) + len(t.columns)))})"
            for t in self.tables
        }
        self._find = (
            f"SELECT customer_id FROM {self.ref(LOOKUP_TABLE)} WHERE key = ? "
            "ORDER BY customer_id LIMIT 1"
        )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def create(self) -> None:
        with self._transaction() as conn:
            for statement in self.ddl():
                conn.execute(statement)

    def load(self, rows_source: Iterable[tuple[str, Sections]]) -> int:
        """Bulk-load ``(customer_id, sections)`` pairs, one transaction per chunk; returns
        how many customers were loaded."""
        loaded = 0
        lookup_insert = f"INSERT INTO {self.ref(LOOKUP_TABLE)} (key, customer_id) VALUES (?, ?)"
        for count, rows, keys in self._chunks(rows_source):
            with self._transaction() as conn:
                for table, table_rows in rows.items():
                    conn.executemany(self._inserts[table], table_rows)
                conn.executemany(lookup_insert, keys)
            loaded += count
        # Move the WAL into the database file, so size_mb measures the tables.
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return loaded

    def profile(self, customer_id: str) -> JsonProfile | None:
        """The customer's sections in JSON form, by dataset; one query per table read."""
        execute = self.conn.execute
        params = (customer_id,)
        return self._assemble(lambda plan: execute(plan.select, params).fetchall())

    def find(self, lookup_key: str) -> str | None:
        """The customer holding ``lookup_key`` (the first by id if several do)."""
        row = self.conn.execute(self._find, (lookup_key,)).fetchone()
        return None if row is None else str(row[0])

    def size_mb(self) -> float:
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / 2**20

    def close(self) -> None:
        self.conn.close()


class NormalisedPostgres(_Normalised):
    """The normalised tables in a PostgreSQL schema the caller creates and drops.

    A read sends every table's query in one pipeline (psycopg's pipeline mode): they are
    independent (each needs only the customer id), so a read is one network round trip
    instead of one per table, while each query stays a plain indexed SELECT returning
    rows, as a normalised application runs them. One round trip per query measured 2.5 to
    3 times slower at p50 (200 customers, server on the same machine); a single
    statement (json_agg, or a UNION of differently shaped rows) would move the assembly
    into the server, a different design from the rows-and-records one measured here.
    Every query is prepared (``prepare=True``) on first use, so the server parses and
    plans it once per connection.
    """

    placeholder = "%s"
    column_types = POSTGRES_TYPES

    def __init__(
        self,
        projections: Mapping[str, Projection[Any]],
        url: str,
        schema: str,
        *,
        chunk_customers: int = 2_000,
    ) -> None:
        self.schema = schema  # before the plans are built: ref() qualifies names with it
        super().__init__(projections, chunk_customers=chunk_customers)
        self.conn = psycopg.connect(url, autocommit=True)
        # timestamptz values come back in the session's zone: UTC gives msgspec's "Z" form.
        self.conn.execute("SET TimeZone TO 'UTC'")
        # One cursor per table: a pipeline keeps each cursor's results until they are fetched.
        self._cursors = [(plan, self.conn.cursor()) for root in self.plans for plan in root.walk()]
        self._find = (
            f"SELECT customer_id FROM {self.ref(LOOKUP_TABLE)} WHERE key = %s "
            "ORDER BY customer_id LIMIT 1"
        )

    def ref(self, name: str) -> str:
        return f"{_quote(self.schema)}.{_quote(name)}"

    def create(self) -> None:
        with self.conn.transaction():
            for statement in self.ddl():
                self.conn.execute(statement)

    def load(self, rows_source: Iterable[tuple[str, Sections]]) -> int:
        """Bulk-load ``(customer_id, sections)`` pairs with COPY, one transaction per chunk;
        returns how many customers were loaded."""
        loaded = 0
        copies = {
            t: f"COPY {self.ref(t.name)} ({self.column_list(t)}) FROM STDIN" for t in self.tables
        }
        lookup_copy = f"COPY {self.ref(LOOKUP_TABLE)} (key, customer_id) FROM STDIN"
        for count, rows, keys in self._chunks(rows_source):
            batches = [(copies[t], table_rows) for t, table_rows in rows.items()]
            batches.append((lookup_copy, keys))
            with self.conn.transaction(), self.conn.cursor() as cursor:
                for sql, table_rows in batches:
                    if table_rows:
                        with cursor.copy(sql) as copy:
                            for row in table_rows:
                                copy.write_row(row)
            loaded += count
        # Set hint bits and statistics now, so the timed reads neither write pages nor race
        # autovacuum.
        for name in [*(t.name for t in self.tables), LOOKUP_TABLE]:
            self.conn.execute(f"VACUUM (ANALYZE) {self.ref(name)}")
        return loaded

    def profile(self, customer_id: str) -> JsonProfile | None:
        """The customer's sections in JSON form, by dataset; one pipelined query per table."""
        params = (customer_id,)
        with self.conn.pipeline():
            for plan, cursor in self._cursors:
                cursor.execute(plan.select, params, prepare=True)
        # Leaving the pipeline block synced it: every cursor holds its rows.
        fetched: dict[_Plan, Sequence[Row]] = {}
        for plan, cursor in self._cursors:
            rows = cursor.fetchall()
            # Decimals, datetimes and dates to their JSON strings, all rows in one C call.
            fetched[plan] = msgspec.to_builtins(rows) if plan.typed and rows else rows
        return self._assemble(fetched.__getitem__)

    def find(self, lookup_key: str) -> str | None:
        """The customer holding ``lookup_key`` (the first by id if several do)."""
        row = self.conn.execute(self._find, (lookup_key,), prepare=True).fetchone()
        return None if row is None else str(row[0])

    def size_mb(self) -> float:
        row = self.conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (self.schema,),
        ).fetchone()
        return int(row[0]) / 2**20 if row else 0.0

    def close(self) -> None:
        self.conn.close()


# --- correctness --------------------------------------------------------------------------


def stored_profiles(
    store: ProfileStore, customer_ids: Iterable[str] | None = None
) -> Iterator[tuple[str, Sections]]:
    """``(customer_id, sections)`` from the document store, for :meth:`load`.

    Without ``customer_ids``: every customer with a section (their ids are collected
    first; the documents are then read one at a time).
    """
    if customer_ids is None:
        customer_ids = sorted(
            {c for d in store.projections for c in store._documents.customer_ids(d)}
        )
    for customer_id in customer_ids:
        profile = store._documents.get(customer_id)
        if profile is not None:
            yield customer_id, profile.sections


def assert_same(
    store: ProfileStore,
    normalised: NormalisedSQLite | NormalisedPostgres,
    customer_ids: Iterable[str],
) -> int:
    """Check each customer's assembled profile equals the stored document's sections.

    Compared in JSON form (:func:`json_form`) and type for type, so a bool read back as
    1 or a float as an int fails. Returns how many customers were checked.
    """
    checked = 0
    for customer_id in customer_ids:
        stored = store._documents.get(customer_id)
        expected = None if stored is None else {n: json_form(s) for n, s in stored.sections.items()}
        difference = _difference(expected, normalised.profile(customer_id), "$")
        if difference is not None:
            raise AssertionError(
                f"{type(normalised).__name__} differs from the document store for "
                f"{customer_id} at {difference}"
            )
        checked += 1
    return checked


def _difference(expected: Any, got: Any, path: str) -> str | None:
    """Where ``got`` first differs from ``expected`` (values and their types), else None."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if expected.keys() != got.keys():
            return f"{path}: keys {sorted(expected)} != {sorted(got)}"
        for key, value in expected.items():
            found = _difference(value, got[key], f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"{path}: {len(expected)} items != {len(got)}"
        for i, (a, b) in enumerate(zip(expected, got, strict=True)):
            found = _difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if type(expected) is not type(got) or expected != got:
        return f"{path}: {expected!r} != {got!r}"
    return None
