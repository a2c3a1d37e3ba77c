"""Relations: from a table's description to its schema and compiled row functions (pure).

Theory of operation. The stream describes a table with a pgoutput ``Relation`` message (column
names, type OIDs, typmods, the replica identity and which columns it flags as identity); the
snapshot reader describes it from ``pg_attribute``. Neither says everything an event needs, so
the I/O side fetches a few catalog facts once per description (:class:`RelationFacts`: the
types with their element and base types, the catalog's key, the NOT NULL columns and the typmod
texts, see :func:`sources.postgres.catalog.relation_facts`) and hands them in. This module runs
no query and holds no connection or store: the same inputs always give the same
:class:`TableShape`, which is what the unit tests feed it.

A :class:`TableShape` holds the :class:`~cdc.schema.TableSchema` (after ``columns.exclude``),
the kept columns as ``(index in the tuple, name, converter)``, the key and its columns' entries,
and two generated functions (:mod:`cdc._codegen`): ``fast_row(values) -> dict`` for tuples
without unchanged-TOAST markers (every Insert) and ``key(row) -> dict | None``. Converters come
from :mod:`.values` (domains resolve to their base type, enums are text, arrays convert their
elements). Type names carry their modifier text (``varchar(20)``, ``numeric(12,2)[]``).

The key of streamed rows is the key *as it was when they were written*: under REPLICA IDENTITY
DEFAULT and USING INDEX the Relation message flags the identity columns of that time, so that
set is the key (in the catalog's index order when today's index has exactly those columns, else
in column order). Under FULL every column is flagged, so the catalog's primary key of now is
used, and only when every one of its columns is in the message; otherwise the rows are keyless
until the next description (:attr:`TableShape.key_unknown` says so, for a warning). NOTHING: no
key. A snapshot reads rows as they are now, so its key is the catalog's (:func:`snapshot_key`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdc import names
from cdc._codegen import make_function
from cdc.errors import FatalError, Kind
from cdc.schema import Column, TableSchema

from .pgoutput import UNCHANGED, Relation
from .values import array_converter, converter_for

#: ``(index in the row tuple, column name, converter)``
Entry = tuple[int, str, Callable[[bytes], Any]]


@dataclass(frozen=True)
class TypeFacts:
    """One row of ``pg_type``, as the catalog reads it (:func:`catalog.type_facts`)."""

    oid: int
    name: str  # "int4", "public.mood"
    typtype: str  # b c d e p r m
    element: int  # element type oid for arrays, else 0
    base: int  # base type oid for domains, else 0
    delim: str
    modout: str | None  # "pg_catalog.varchartypmodout" or None


@dataclass(frozen=True)
class RelationFacts:
    """What the catalog says about one relation, fetched by the I/O side before describing it.

    ``types``: every type OID of the columns, with the element types of arrays and the base
    types of domains (a type missing here converts by its OID and is named ``oid:N``).
    ``key``: the catalog's key columns in index order for the relation's replica identity (the
    replica identity index under USING INDEX, else the primary key), ``None`` when it has none.
    ``typmods``: ``(type oid, typmod) -> modifier text`` for each modified type of the columns
    (see :func:`typmods_wanted`).
    """

    types: Mapping[int, TypeFacts]
    key: Sequence[str] | None
    not_null: Collection[str]
    typmods: Mapping[tuple[int, int], str]


# -- types ----------------------------------------------------------------------------------------


def _base(types: Mapping[int, TypeFacts], oid: int) -> TypeFacts | None:
    t = types.get(oid)
    seen = 0
    while t is not None and t.typtype == "d" and t.base and seen < 10:
        t = types.get(t.base)
        seen += 1
    return t


def converter(types: Mapping[int, TypeFacts], oid: int, bigint_as_string: bool) -> Any:
    """The value converter of a column of type ``oid`` (see :mod:`.values`)."""
    t = _base(types, oid)
    if t is None:
        return converter_for(oid, bigint_as_string=bigint_as_string)
    if t.element:
        elem = _base(types, t.element)
        elem_oid = elem.oid if elem is not None else t.element
        if elem is not None and elem.typtype == "e":
            elem_oid = 25  # enums are text
        return array_converter(
            converter_for(elem_oid, bigint_as_string=bigint_as_string), t.delim or ","
        )
    if t.typtype == "e":
        return converter_for(25)
    return converter_for(t.oid, bigint_as_string=bigint_as_string)


def typmods_wanted(
    types: Mapping[int, TypeFacts], columns: Sequence[tuple[int, int]]
) -> list[tuple[TypeFacts, int]]:
    """The ``(type, typmod)`` pairs whose modifier text :func:`type_name` needs, for columns
    given as ``(type oid, typmod)`` (the I/O side asks the catalog for their texts)."""
    out: list[tuple[TypeFacts, int]] = []
    for oid, typmod in columns:
        t = types.get(oid)
        if t is not None and t.element:
            t = types.get(t.element)
        if t is not None and typmod >= 0 and t.modout:
            out.append((t, typmod))
    return out


def _typmod(typmods: Mapping[tuple[int, int], str], t: TypeFacts, typmod: int) -> str:
    if typmod < 0 or not t.modout:
        return ""
    return typmods[(t.oid, typmod)]


def type_name(
    types: Mapping[int, TypeFacts], typmods: Mapping[tuple[int, int], str], oid: int, typmod: int
) -> str:
    """A column's type as the schema names it: ``int4``, ``varchar(20)``, ``public.mood[]``."""
    t = types.get(oid)
    if t is None:
        return f"oid:{oid}"
    if t.element:
        elem = types.get(t.element)
        base = elem.name if elem is not None else f"oid:{t.element}"
        mod = _typmod(typmods, elem, typmod) if elem is not None else ""
        return f"{base}{mod}[]"
    return f"{t.name}{_typmod(typmods, t, typmod)}"


# -- keys -----------------------------------------------------------------------------------------


def stream_key(msg: Relation, catalog_key: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The key of the rows a Relation message describes, and the catalog key's columns absent
    from the message (non-empty only under FULL, when the key of that time cannot be known and
    the rows are keyless). ``catalog_key``: :attr:`RelationFacts.key`."""
    if msg.replica_identity in ("d", "i"):
        flagged = [c.name for c in msg.columns if c.flags & 1]
        if not flagged:
            return [], []
        if catalog_key is not None and sorted(catalog_key) == sorted(flagged):
            return list(catalog_key), []
        return flagged, []
    if msg.replica_identity == "f":
        if not catalog_key:
            return [], []
        present = {c.name for c in msg.columns}
        absent = [k for k in catalog_key if k not in present]
        if absent:
            return [], absent
        return list(catalog_key), []
    return [], []


def snapshot_key(identity: str, catalog_key: Sequence[str] | None) -> list[str]:
    """The key of rows read now: the catalog's, except under REPLICA IDENTITY NOTHING."""
    if identity == "n" or not catalog_key:
        return []
    return list(catalog_key)


# -- shapes ---------------------------------------------------------------------------------------


def compile_row(columns: Sequence[Entry], table: str = "") -> Any:
    """``row(values) -> dict`` for tuples without unchanged-TOAST markers."""
    consts = {f"_c{j}": conv for j, (_, _, conv) in enumerate(columns)}
    items = [
        f"    {name!r}: None if (v{j} := values[{i}]) is None else _c{j}(v{j}),"
        for j, (i, name, _) in enumerate(columns)
    ]
    return make_function("row", ["values"], ["return {", *items, "}"], consts, f"pg row {table}")


def compile_key(key_names: Sequence[str], table: str = "") -> Any:
    """``key(row) -> dict | None``: the key columns of a converted row, in key order."""
    if not key_names:
        return make_function("key", ["row"], ["return None"], None, f"pg key {table}")
    items = ", ".join(f"{k!r}: get({k!r})" for k in key_names)
    return make_function(
        "key", ["row"], ["get = row.get", f"return {{{items}}}"], None, f"pg key {table}"
    )


class TableShape:
    """A described table: its schema and what converts its rows."""

    __slots__ = (
        "schema",
        "columns",
        "key_names",
        "key_entries",
        "ncols",
        "fast_row",
        "key",
        "key_unknown",
    )

    def __init__(
        self,
        schema: TableSchema,
        columns: list[Entry],
        key_entries: list[Entry],
        ncols: int,
        key_unknown: tuple[list[str], list[str]] | None = None,
    ) -> None:
        self.schema = schema
        self.columns = columns  # kept columns
        self.key_names = schema.key
        self.key_entries = key_entries  # key columns (index in tuple, name, converter)
        self.ncols = ncols
        #: row(values) -> dict, for tuples without UNCHANGED (every Insert)
        self.fast_row = compile_row(columns, schema.name)
        #: key(row) -> the key dict, or None for a keyless table
        self.key = compile_key(schema.key, schema.name)
        #: under FULL: (the catalog's key now, its columns absent from the description)
        self.key_unknown = key_unknown

    def row(self, values: Sequence[Any]) -> tuple[dict[str, Any], list[str] | None]:
        """Convert a tuple that may hold UNCHANGED markers (Update and Delete)."""
        if UNCHANGED not in values:
            return self.fast_row(values), None
        out: dict[str, Any] = {}
        unchanged: list[str] = []
        for i, name, conv in self.columns:
            v = values[i]
            if v is None:
                out[name] = None
            elif v is UNCHANGED:
                unchanged.append(name)
            else:
                out[name] = conv(v)
        return out, unchanged or None

    def key_row(self, values: Sequence[Any]) -> dict[str, Any]:
        """The key columns of an old-key ('K') tuple, which carries only those."""
        out: dict[str, Any] = {}
        for i, name, conv in self.key_entries:
            v = values[i]
            out[name] = None if v is None or v is UNCHANGED else conv(v)
        return out


def describe(
    name: str,
    columns: Sequence[tuple[str, int, int]],
    key: Sequence[str],
    facts: RelationFacts,
    exclude: Mapping[str, Collection[str]],
    *,
    listed: str | None = None,
    bigint_as_string: bool = False,
    key_unknown: tuple[list[str], list[str]] | None = None,
) -> TableShape:
    """The shape of table ``name`` with ``columns`` as ``(name, type oid, typmod)`` in tuple
    order and its ``key``. ``exclude`` is the pipeline's ``columns.exclude`` (looked up under
    ``listed``, the name the pipeline file gives the table, then under ``name``). An excluded
    column the table lacks, or an excluded key column, is a :class:`FatalError` (``config``).
    """
    excluded = set(exclude.get(listed or name) or exclude.get(name, ()))
    col_names = [c[0] for c in columns]
    missing = sorted(excluded - set(col_names))
    if missing:
        raise FatalError(
            f"columns.exclude for {listed or name} names {', '.join(map(repr, missing))}, which "
            f"the table does not have (its columns: {', '.join(col_names)}); correct the name in "
            "the pipeline file (an excluded column that does not exist would let the column "
            "meant to be hidden through)",
            kind=Kind.CONFIG,
            table=listed or name,
        )
    for k in key:
        if k in excluded:
            raise FatalError(
                f"columns.exclude for {name} names the key column {k!r}; key columns "
                "cannot be excluded",
                kind=Kind.CONFIG,
                table=name,
            )
    types, typmods, not_null = facts.types, facts.typmods, facts.not_null
    kept: list[Entry] = []
    schema_columns: list[Column] = []
    by_name: dict[str, Entry] = {}
    for i, (col, oid, typmod) in enumerate(columns):
        conv = converter(types, oid, bigint_as_string)
        by_name[col] = (i, col, conv)
        if col in excluded:
            continue
        kept.append((i, col, conv))
        schema_columns.append(
            Column(col, type_name(types, typmods, oid, typmod), col not in not_null)
        )
    schema = TableSchema(name, tuple(schema_columns), tuple(key))
    return TableShape(
        schema, kept, [by_name[k] for k in key if k in by_name], len(columns), key_unknown
    )


def describe_relation(
    msg: Relation,
    facts: RelationFacts,
    exclude: Mapping[str, Collection[str]],
    *,
    listed: str | None = None,
    bigint_as_string: bool = False,
) -> TableShape:
    """The shape of the table a pgoutput Relation message describes (key: :func:`stream_key`).
    When the key of that time cannot be known, :attr:`TableShape.key_unknown` is set."""
    name = names.join(msg.namespace, msg.name)
    key, absent = stream_key(msg, facts.key)
    unknown = (list(facts.key or ()), absent) if absent else None
    columns = [(c.name, c.type_oid, c.typmod) for c in msg.columns]
    return describe(
        name,
        columns,
        key,
        facts,
        exclude,
        listed=listed,
        bigint_as_string=bigint_as_string,
        key_unknown=unknown,
    )
