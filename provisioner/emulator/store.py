"""SQLite persistence of the emulator: element instances and a log of every request.

Instances survive emulator restarts (a user's first runs keep their state), and tests read the
database directly through ``EmulatorDB`` to see what really happened behind faults: whether a
"lost" create was committed, what status each request got, and whether a secret value is the
one sent (secret values are stored as keyed digests, never in clear: ``Sealed``).

One connection in WAL mode, guarded by ``Store.lock``, serves the emulator's connection threads (the
emulator takes the same lock for its fault draws, its rate limit and its log); every statement is
short and indexed (keyset paging, a tag table with a (tag, instance) key). Writes are not synced to
disk (``synchronous=OFF``): a commit is a few page writes into the OS cache. Other processes see
each commit at once, and an emulator that crashes or is killed loses nothing; only an OS crash or a
power loss could lose the latest writes or damage the file, a fair price for a test emulator's state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, name_search TEXT NOT NULL,
    element_key TEXT NOT NULL, reported_key TEXT NOT NULL, tags TEXT NOT NULL, configuration TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE, created_date TEXT NOT NULL, updated_date TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS instances_element ON instances(element_key);
CREATE INDEX IF NOT EXISTS instances_reported ON instances(reported_key);
CREATE TABLE IF NOT EXISTS instance_tags (
    tag TEXT NOT NULL, instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    PRIMARY KEY (tag, instance_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instance_tags_instance ON instance_tags(instance_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS issued_tokens (token TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    query TEXT NOT NULL, status INTEGER NOT NULL, fault TEXT, duration_ms REAL NOT NULL);
CREATE TABLE IF NOT EXISTS instance_users (
    instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE, used_by TEXT NOT NULL,
    PRIMARY KEY (instance_id, used_by)) WITHOUT ROWID;
"""

_INSTANCE_COLUMNS = "id, name, element_key, reported_key, tags, configuration, token, created_date, updated_date"
_INSTANCE_COLUMNS += ", valid, disabled, refused"
_HEALTH_COLUMNS = ("valid INTEGER NOT NULL DEFAULT 1", "disabled INTEGER DEFAULT 0", "refused INTEGER DEFAULT 0")
_REQUEST_COLUMNS = ("id", "ts", "method", "path", "query", "status", "fault", "durationMs")
_WRITE = "BEGIN IMMEDIATE"
_SEALED_FIELD = "$sealed"  # stored values are strings or null: an object is always a sealed value


class StoreClosed(RuntimeError):
    """The store was closed (the emulator is stopping)."""


def utc_now(milliseconds: bool = False) -> str:
    """Current time as the API prints it, 2017-08-07T18:46:38Z (with milliseconds for the log)."""
    now = time.time()
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return text + (f".{int(now % 1 * 1000):03d}Z" if milliseconds else "Z")


class Sealed:
    """A secret configuration value as the emulator keeps it: a keyed digest (HMAC-SHA256 with a
    random key of this database), never the value. It answers the two questions the emulator has:
    is there a value (to mask it as ``********``), and is it equal to this one (``==`` with a str
    compares digests, so a test can still check what was stored)."""

    __slots__ = ("digest", "_key")

    def __init__(self, digest: str, key: bytes):
        self.digest = digest
        self._key = key

    @classmethod
    def of(cls, value: str, key: bytes) -> Sealed:
        digest = hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return cls("hmac-sha256:" + digest, key)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            other = Sealed.of(other, self._key)
        return hmac.compare_digest(self.digest, other.digest) if isinstance(other, Sealed) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return "Sealed(********)"


def _encode_default(value: object) -> object:
    if isinstance(value, Sealed):
        return {_SEALED_FIELD: value.digest}
    raise TypeError(f"{type(value).__name__} cannot be stored")


# JSON for a column; ASCII-escaped so any Python string (even a lone surrogate) survives.
_dumps = json.JSONEncoder(separators=(",", ":"), default=_encode_default).encode


def _load_configuration(text: str, key: bytes) -> dict:
    config = json.loads(text)
    for name, value in config.items():
        if isinstance(value, dict) and _SEALED_FIELD in value:
            config[name] = Sealed(value[_SEALED_FIELD], key)
    return config


def seal(configuration: dict, secret_keys: Collection[str], key: bytes) -> dict:
    """The configuration with the values of ``secret_keys`` sealed (blank values stay as they are)."""
    return {
        name: Sealed.of(value, key) if name in secret_keys and isinstance(value, str) and value else value
        for name, value in configuration.items()
    }


def connect(path: str | Path, create: bool) -> sqlite3.Connection:
    """Open the database; ``create=False`` refuses to create a missing file."""
    if str(path) == ":memory:":
        return sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(str(path), timeout=10, check_same_thread=False, isolation_level=None)
    if not path.exists():
        raise FileNotFoundError(f"no emulator database at {path}")
    return sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True, timeout=10, isolation_level=None)


@dataclass(frozen=True)
class InstanceRow:
    """One stored instance; ``configuration`` holds the values as sent, secret ones ``Sealed``."""

    id: int
    name: str
    element_key: str
    reported_key: str
    tags: list
    configuration: dict
    token: str
    created_date: str
    updated_date: str
    valid: bool = True  # false once the provider refused its credentials
    disabled: bool = False  # DELETE /instances/{id}/enabled
    refused: bool = False  # ``EmulatorDB.refuse_credentials``: the provider refuses the stored credentials

    @classmethod
    def from_sql(cls, row: tuple, key: bytes) -> InstanceRow:
        """Build from a SELECT of ``_INSTANCE_COLUMNS``."""
        id_, name, element_key, reported_key, tags, configuration, token, created, updated, *health = row
        config = _load_configuration(configuration, key)
        flags = (bool(f) for f in health)
        return cls(id_, name, element_key, reported_key, json.loads(tags), config, token, created, updated, *flags)


@dataclass(frozen=True)
class ListQuery:
    """Filters and position of one page of ``GET /instances``."""

    element_key: str | None = None  # matches the instance's element key or its reported key
    tags: tuple[str, ...] = ()  # instance must carry all of them
    search: str | None = None  # lower-cased substring of name or element key
    after_id: int = 0
    limit: int = 200


class Store:
    """The emulator's database; every method is thread-safe.

    ``secret_keys(element_key)`` names the configuration keys whose values are secret (masked in
    responses): those are stored sealed (a keyed digest), never in clear."""

    def __init__(self, path: str | Path, secret_keys: Callable[[str], Collection[str]] = lambda _element: ()):
        self._secret_keys = secret_keys
        self._conn = connect(path, create=True)
        self.lock = threading.RLock()  # reentrant: the emulator holds it around a request's store calls
        self._closed = False
        for pragma in ("journal_mode=WAL", "synchronous=OFF", "foreign_keys=ON", f"user_version={SCHEMA_VERSION}"):
            self._conn.execute(f"PRAGMA {pragma}")
        self._conn.executescript(_SCHEMA)
        for column in _HEALTH_COLUMNS:  # added to a new table, or to one made before they existed
            with suppress(sqlite3.OperationalError):
                self._conn.execute(f"ALTER TABLE instances ADD COLUMN {column}")
        self._conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('digest_key', ?)", (secrets.token_bytes(32),)
        )
        self._key = self._conn.execute("SELECT value FROM meta WHERE key = 'digest_key'").fetchone()[0]

    def close(self) -> None:
        """Close the connection; later calls raise StoreClosed. Idempotent."""
        with self.lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    @contextmanager
    def _locked(self, begin: str = "") -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; with ``begin`` ("BEGIN IMMEDIATE" for writes), inside that
        transaction, committed when the block ends (rolled back if it raises)."""
        with self.lock:
            if self._closed:
                raise StoreClosed("the emulator store is closed")
            if not begin:
                yield self._conn
                return
            self._conn.execute(begin)
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- instances ------------------------------------------------------------------------------

    def create_instance(
        self, name: str, element_key: str, reported_key: str, tags: list[str], configuration: dict
    ) -> InstanceRow:
        """Insert a new instance with a fresh token, never handed out before (issued_tokens)."""
        configuration = seal(configuration, self._secret_keys(element_key), self._key)
        now = utc_now()
        with self._locked(_WRITE) as conn:
            token = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
            while not conn.execute("INSERT OR IGNORE INTO issued_tokens (token) VALUES (?)", (token,)).rowcount:
                token = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
            cur = conn.execute(
                "INSERT INTO instances (name, name_search, element_key, reported_key, tags, configuration,"
                " token, created_date, updated_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, name.lower(), element_key, reported_key, _dumps(tags), _dumps(configuration), token, now, now),
            )
            instance_id = cur.lastrowid or 0
            self._write_tags(conn, instance_id, tags)
        return InstanceRow(instance_id, name, element_key, reported_key, list(tags), configuration, token, now, now)

    @staticmethod
    def _write_tags(conn: sqlite3.Connection, instance_id: int, tags: list[str]) -> None:
        """Replace the tag index rows of one instance."""
        conn.execute("DELETE FROM instance_tags WHERE instance_id = ?", (instance_id,))
        conn.executemany(
            "INSERT OR IGNORE INTO instance_tags (tag, instance_id) VALUES (?, ?)", [(tag, instance_id) for tag in tags]
        )

    def get_instance(self, instance_id: int | None = None, token: str | None = None) -> InstanceRow | None:
        """One instance by id (or by its token), or None."""
        where, value = ("id", instance_id) if token is None else ("token", token)
        with self._locked() as conn:
            row = conn.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE {where} = ?", (value,)).fetchone()
        return InstanceRow.from_sql(row, self._key) if row else None

    def update_instance(self, instance_id: int, change: Callable[[InstanceRow], InstanceRow]) -> InstanceRow | None:
        """Read, ``change`` (may raise to abort) and write back one instance atomically.
        Returns the new row, or None if there is no such instance."""
        with self._locked(_WRITE) as conn:
            row = conn.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE id = ?", (instance_id,)).fetchone()
            if row is None:
                return None
            old = InstanceRow.from_sql(row, self._key)
            new = replace(change(old), updated_date=utc_now())
            new = replace(new, configuration=seal(new.configuration, self._secret_keys(new.element_key), self._key))
            conn.execute(
                "UPDATE instances SET name = ?, name_search = ?, tags = ?, configuration = ?, updated_date = ?,"
                " valid = ?, disabled = ?, refused = ? WHERE id = ?",
                (new.name, new.name.lower(), _dumps(new.tags), _dumps(new.configuration), new.updated_date)
                + (new.valid, new.disabled, new.refused, instance_id),
            )
            if new.tags != old.tags:
                self._write_tags(conn, instance_id, new.tags)
        return new

    def delete_instance(self, instance_id: int) -> bool:
        """Delete one instance; False if it did not exist."""
        with self._locked(_WRITE) as conn:
            conn.execute("DELETE FROM instance_tags WHERE instance_id = ?", (instance_id,))
            return conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,)).rowcount > 0

    def instance_users(self, instance_id: int) -> list[str]:
        """What uses an instance (``EmulatorDB.mark_in_use``); a used instance cannot be deleted."""
        with self._locked() as conn:
            sql = "SELECT used_by FROM instance_users WHERE instance_id = ? ORDER BY used_by"
            return [r[0] for r in conn.execute(sql, (instance_id,))]

    def count_instances(self) -> int:
        with self._locked() as conn:
            return conn.execute("SELECT count(*) FROM instances").fetchone()[0]

    def parse_row(self, row: tuple) -> InstanceRow:  # a raw row of ``list_rows``
        return InstanceRow.from_sql(row, self._key)

    def list_rows(self, query: ListQuery) -> tuple[list[tuple], int, bool]:
        """One page in id order after ``query.after_id``: (rows, total matching, more pages?), each row
        as stored (a tuple of ``_INSTANCE_COLUMNS``, JSON text unparsed; ``parse_row`` reads one):
        equal tuples are equal instances, which lets a caller reuse what it built from one."""
        where, params = _where(query)
        if len(query.tags) == 1 and query.element_key is None and not query.search:
            # the common listing (one tag): counted on the tag index alone
            count_sql, count_params = "SELECT count(*) FROM instance_tags WHERE tag = ?", [query.tags[0]]
        else:
            count_sql, count_params = f"SELECT count(*) FROM instances WHERE {where}", params
        page_sql = f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE {where} AND id > ? ORDER BY id LIMIT ?"
        with self._locked("BEGIN") as conn:  # one snapshot for both statements
            total = conn.execute(count_sql, count_params).fetchone()[0]
            rows = conn.execute(page_sql, (*params, query.after_id, query.limit + 1)).fetchall()
        return [tuple(r) for r in rows[: query.limit]], total, len(rows) > query.limit

    # -- request log ----------------------------------------------------------------------------

    def record_request(
        self, method: str, path: str, query: str, status: int, fault: str | None, duration_ms: float
    ) -> int:
        """Append one request to the log; returns its id."""
        with self._locked() as conn:
            cur = conn.execute(
                "INSERT INTO requests (ts, method, path, query, status, fault, duration_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (utc_now(milliseconds=True), method, path, query, status, fault, round(duration_ms, 2)),
            )
            return cur.lastrowid or 0

    def set_request_status(self, request_id: int, status: int) -> None:
        """Correct the status of a logged request (0 when the response could not be sent)."""
        with self._locked() as conn:
            conn.execute("UPDATE requests SET status = ? WHERE id = ?", (status, request_id))


def _where(query: ListQuery) -> tuple[str, list]:
    """SQL condition and parameters for the filters of a ``ListQuery``."""
    clauses: list[str] = ["1 = 1"]
    params: list[Any] = []
    if query.element_key is not None:
        clauses.append("(element_key = ? OR reported_key = ?)")
        params += [query.element_key, query.element_key]
    for tag in query.tags:  # one index lookup per instance and tag (primary key (tag, instance_id))
        clauses.append("EXISTS (SELECT 1 FROM instance_tags t WHERE t.tag = ? AND t.instance_id = instances.id)")
        params.append(tag)
    if query.search:
        clauses.append(
            "(instr(name_search, ?) > 0 OR instr(lower(element_key), ?) > 0 OR instr(lower(reported_key), ?) > 0)"
        )
        params += [query.search] * 3
    return " AND ".join(clauses), params


class EmulatorDB:
    """Read helper for tests: opens the database file on each call, so it works while the
    emulator runs, from this process or another one."""

    def __init__(self, db_path: str | Path):
        self.path = Path(db_path)

    def _connect(self) -> closing[sqlite3.Connection]:
        """A short-lived connection, closed when the ``with`` block ends."""
        return closing(connect(self.path, create=False))

    def instances(self) -> list[dict]:
        """Every stored instance, ordered by id, as stored: secret values are ``Sealed`` (compare
        them with ``==`` to the value expected)."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances ORDER BY id").fetchall()
            found = conn.execute("SELECT value FROM meta WHERE key = 'digest_key'").fetchone()
        key = found[0] if found else b""
        return [
            {"id": i.id, "name": i.name, "element": i.element_key, "tags": i.tags, "configuration": i.configuration}
            | {"token": i.token, "createdDate": i.created_date, "updatedDate": i.updated_date}
            | {"valid": i.valid, "disabled": i.disabled}
            for i in (InstanceRow.from_sql(row, key) for row in rows)
        ]

    def requests(self) -> list[dict]:
        """Every logged request, oldest first; status 0 means the connection was dropped."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, ts, method, path, query, status, fault, duration_ms FROM requests ORDER BY id"
            ).fetchall()
        return [dict(zip(_REQUEST_COLUMNS, row, strict=True)) for row in rows]

    def clear_requests(self) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM requests")

    def mark_in_use(self, instance_id: int, used_by: str = "formula instance 'emulated'") -> None:
        """Make the instance used (as a formula instance uses it on the platform): its DELETE then
        answers 409 until ``release``. KeyError if there is no such instance."""
        with self._connect() as conn:
            conn.execute("PRAGMA foreign_keys=ON")
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO instance_users (instance_id, used_by) VALUES (?, ?)", (instance_id, used_by)
                )
            except sqlite3.IntegrityError:
                raise KeyError(f"no instance with id {instance_id}") from None

    def refuse_credentials(self, instance_id: int) -> None:
        """Make the provider refuse the instance's stored credentials (a password changed at the
        provider): it becomes ``valid: false``, and ``reAuthenticate=true`` fails until it sends other
        secret values. KeyError if there is no such instance."""
        with self._connect() as conn:
            if not conn.execute("UPDATE instances SET valid = 0, refused = 1 WHERE id = ?", (instance_id,)).rowcount:
                raise KeyError(f"no instance with id {instance_id}")

    def release(self, instance_id: int) -> None:
        """Undo every ``mark_in_use`` of the instance."""
        with self._connect() as conn:
            conn.execute("DELETE FROM instance_users WHERE instance_id = ?", (instance_id,))
