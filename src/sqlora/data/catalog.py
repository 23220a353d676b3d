"""The schema of any :class:`~sqlora.sql.engines.Database`, read from the engine's own catalog, as
tables.json tells it (so prompts, constrained decoding and EM treat every engine alike).

SQLite: :func:`sqlora.data.schema.read_sqlite_schema`. DuckDB: ``duckdb_tables()``,
``duckdb_columns()`` and ``duckdb_constraints()`` of the ``main`` schema, tables by name (DuckDB
keeps no creation order). PostgreSQL: ``pg_class``,
``pg_attribute`` and ``pg_constraint`` of the database's chosen schema (``public`` by default);
tables, views and materialised views in creation (oid) order, primary and foreign keys in key order.
"""

from __future__ import annotations

from sqlora.data.schema import Column, DatabaseSchema, read_sqlite_schema, type_class
from sqlora.errors import SqloraError
from sqlora.sql.engines import Database, connect_duckdb, open_database, postgres_connection


def read_schema(database: Database | str) -> DatabaseSchema:
    """The schema of ``database`` (or of the database a path or URL names); SqloraError when it has no tables."""
    db = database if isinstance(database, Database) else open_database(database)
    if db.engine == "sqlite":
        schema = read_sqlite_schema(db.location, db.name)
    elif db.engine == "duckdb":
        schema = _read_duckdb(db)
    else:
        schema = _read_postgres(db)
    if not schema.tables:
        where = f" (schema {db.schema!r})" if db.engine == "postgresql" else ""
        raise SqloraError(f"{db}: the database has no tables{where}")
    return schema


def _assemble(
    db_id: str,
    tables: list[str],
    columns: dict[str, list[tuple[str, str]]],
    keys: list[tuple[str, list[str]]],
    references: list[tuple[str, list[str], str, list[str]]],
) -> DatabaseSchema:
    """A DatabaseSchema from names: columns per table (name, declared type), primary keys (table,
    columns) and foreign keys (table, columns, referenced table, referenced columns)."""
    flat: list[Column] = []
    index: dict[tuple[str, str], int] = {}
    for t, table in enumerate(tables):
        for name, declared in columns.get(table, []):
            flat.append(Column(table=t, name=name, type=type_class(declared), natural=name.lower().replace("_", " ")))
            index[(table, name)] = len(flat)
    position = {table: t for t, table in enumerate(tables)}
    # In table order as SQLite lists them; a table's foreign keys last-declared first, as SQLite's
    # pragma_foreign_key_list (and so Spider's tables.json) has them.
    keys = sorted(keys, key=lambda k: position.get(k[0], len(tables)))
    references = sorted(reversed(references), key=lambda r: position.get(r[0], len(tables)))
    primary_keys = [tuple(index[(table, c)] for c in cols) for table, cols in keys if cols and all((table, c) in index for c in cols)]
    foreign_keys: list[tuple[int, int]] = []
    for table, cols, target, target_cols in references:
        for col, ref in zip(cols, target_cols):
            pair = (index.get((table, col)), index.get((target, ref)))
            if None not in pair and pair not in foreign_keys:
                foreign_keys.append(pair)
    return DatabaseSchema(
        db_id=db_id,
        tables=tables,
        columns=flat,
        primary_keys=primary_keys,
        foreign_keys=foreign_keys,
        table_natural=[name.lower().replace("_", " ") for name in tables],
    )


def _read_duckdb(db: Database) -> DatabaseSchema:
    import duckdb

    try:
        conn = connect_duckdb(db.location)
    except duckdb.Error as exc:
        raise SqloraError(f"{db}: cannot open ({' '.join(str(exc).split())})") from None
    try:
        # By name: DuckDB keeps no creation order (a foreign key re-creates the table it references).
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND NOT internal AND NOT temporary "
                "UNION ALL SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal "
                "AND NOT temporary ORDER BY 1"
            ).fetchall()
        ]
        columns: dict[str, list[tuple[str, str]]] = {}
        for table, name, declared in conn.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main' ORDER BY table_oid, column_index"
        ).fetchall():
            columns.setdefault(table, []).append((name, declared))
        constraints = conn.execute(
            "SELECT table_name, constraint_type, constraint_column_names, referenced_table, referenced_column_names "
            "FROM duckdb_constraints() WHERE schema_name = 'main' AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY') "
            "ORDER BY table_oid, constraint_index"
        ).fetchall()
    finally:
        conn.close()
    keys = [(table, list(cols)) for table, kind, cols, _, _ in constraints if kind == "PRIMARY KEY"]
    references = [
        (table, list(cols), target, list(target_cols)) for table, kind, cols, target, target_cols in constraints if kind == "FOREIGN KEY"
    ]
    return _assemble(db.name, tables, columns, keys, references)


def _read_postgres(db: Database) -> DatabaseSchema:
    with postgres_connection(db.location) as conn:
        relations = conn.execute(
            "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition ORDER BY c.oid",
            (db.schema,),
        ).fetchall()
        name_of = {oid: name for oid, name in relations}
        columns: dict[str, list[tuple[str, str]]] = {}
        attribute: dict[tuple[int, int], str] = {}
        for oid, number, name, declared in conn.execute(
            "SELECT attrelid, attnum, attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = ANY(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attrelid, attnum",
            (list(name_of),),
        ).fetchall():
            columns.setdefault(name_of[oid], []).append((name, declared))
            attribute[(oid, number)] = name
        keys, references = [], []
        for oid, kind, key, target, target_key in conn.execute(
            "SELECT conrelid, contype, conkey, confrelid, confkey FROM pg_constraint "
            "WHERE conrelid = ANY(%s) AND contype IN ('p', 'f') ORDER BY conrelid, contype DESC, oid",
            (list(name_of),),
        ).fetchall():
            cols = [attribute.get((oid, n)) for n in key]
            if kind == "p":
                keys.append((name_of[oid], cols))
            elif target in name_of:  # a reference into another schema is not part of this one
                references.append((name_of[oid], cols, name_of[target], [attribute.get((target, n)) for n in target_key]))
        conn.rollback()
    return _assemble(db.name, [name for _, name in relations], columns, keys, references)
