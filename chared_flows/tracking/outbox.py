"""A durable local outbox: items to send somewhere, kept until that place says 2xx.

One SQLite file (WAL, `synchronous=FULL`, so every commit is fsynced). Each item
has an idempotency key chosen by the caller (same key -> same item, inserted
once), a status (`pending`, `done`, `dead`) and a lease: a sender first claims
an item for a while, and nobody else sends it until the lease expires. That is
what keeps a slow request that is still in flight from being sent again by
`sync` in the same process.

Delivery is at-least-once: if a server stores a request but its answer never
arrives (hung, killed), the item is sent again later. The key travels with the
item (PromptLayer: in the request metadata) so the receiver can drop repeats.
Nothing secret may be put into an item: the API key stays in the environment.

One row per key, holding the *latest* version: putting a different payload under a
known key (a retried pair whose first attempt errored) replaces the row and bumps its
version, so the error version is never sent after the success. If the old version was
already sent, the new one is sent too (the receiver learns which request it supersedes
from the row's kept answer); if the old version is in flight, that sender's `complete`
does not mark the new version done. An item's answer (an id the receiver returned:
a request id, a template version, a group id) is kept for items that depend on it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    answer TEXT NOT NULL DEFAULT ''
)
"""
# Columns added after the first release; older outbox files get them on open.
_ADDED_COLUMNS = {"version": "INTEGER NOT NULL DEFAULT 1", "answer": "TEXT NOT NULL DEFAULT ''"}


@dataclass(frozen=True)
class Item:
    key: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    version: int = 1
    answer: str = ""  # the previous version's answer, if one was sent


def default_outbox_path(root: Path | None = None, name: str = "promptlayer") -> Path:
    return Path(root or Path.cwd()).resolve() / ".chared" / "outbox" / f"{name}.sqlite3"


class Outbox:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # journal_mode cannot change inside a transaction, so not through _db().
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(items)")}
            for column, declaration in _ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE items ADD COLUMN {column} {declaration}")
        finally:
            db.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One connection per operation: the outbox is used from the decoding
        # thread, the sender thread and late-finishing request threads at once.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def put(self, key: str, kind: str, payload: dict[str, Any]) -> bool:
        """Store an item, or replace a different payload under the same key; False if nothing changed.

        A replaced item becomes pending again with the next version, whatever its status.
        """
        now = time.time()
        text = json.dumps(payload, sort_keys=True)
        with self._db() as db:
            row = db.execute("SELECT payload FROM items WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO items (key, kind, payload, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (key, kind, text, now, now),
                )
                return True
            if row[0] == text:
                return False
            db.execute(
                "UPDATE items SET kind = ?, payload = ?, version = version + 1, status = 'pending', "
                "attempts = 0, last_error = '', updated = ? WHERE key = ?",
                (kind, text, now, key),
            )
            return True

    def claim(self, key: str, lease_s: float) -> Item | None:
        """Take a pending item whose lease has expired; None if done, dead or leased."""
        now = time.time()
        with self._db() as db:
            cur = db.execute(
                "UPDATE items SET lease_until = ?, updated = ? "
                "WHERE key = ? AND status = 'pending' AND lease_until <= ?",
                (now + lease_s, now, key, now),
            )
            if cur.rowcount != 1:
                return None
            kind, payload, attempts, version, answer = db.execute(
                "SELECT kind, payload, attempts, version, answer FROM items WHERE key = ?", (key,)
            ).fetchone()
        return Item(key, kind, json.loads(payload), attempts, version, answer)

    def complete(
        self,
        key: str,
        followups: list[tuple[str, str, dict[str, Any]]] = (),
        *,
        answer: str = "",
        version: int | None = None,
    ) -> None:
        """Mark an item done (keeping the receiver's answer) and add its followups, atomically.

        With `version`, only that version is marked done: if the payload was replaced while
        it was in flight, the item just leaves its lease and stays pending for the new one.
        """
        now = time.time()
        with self._db() as db:
            done = db.execute(
                "UPDATE items SET status = 'done', attempts = attempts + 1, lease_until = 0, "
                "last_error = '', answer = ?, updated = ? WHERE key = ? AND (? IS NULL OR version = ?)",
                (str(answer), now, key, version, version),
            ).rowcount
            if not done:
                db.execute("UPDATE items SET lease_until = 0, answer = ?, updated = ? WHERE key = ?",
                           (str(answer), now, key))
            for f_key, f_kind, f_payload in followups:
                db.execute(
                    "INSERT OR IGNORE INTO items (key, kind, payload, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (f_key, f_kind, json.dumps(f_payload, sort_keys=True), now, now),
                )

    def fail(self, key: str, error: str, *, permanent: bool = False) -> None:
        """Record a failed attempt; the item becomes claimable again unless permanent."""
        with self._db() as db:
            db.execute(
                "UPDATE items SET attempts = attempts + 1, last_error = ?, lease_until = 0, "
                "status = CASE WHEN ? THEN 'dead' ELSE status END, updated = ? WHERE key = ?",
                (error[:2000], permanent, time.time(), key),
            )

    def answer(self, key: str) -> str:
        """What the receiver answered for a sent item ('' if not sent yet)."""
        with self._db() as db:
            row = db.execute("SELECT answer FROM items WHERE key = ? AND status = 'done'", (key,)).fetchone()
        return row[0] if row else ""

    def errors(self) -> dict[str, str]:
        """key -> the last error of every item that has one (a run's closing line quotes it)."""
        with self._db() as db:
            rows = db.execute("SELECT key, last_error FROM items WHERE last_error != ''").fetchall()
        return dict(rows)

    def keys(self, status: str = "pending") -> list[str]:
        with self._db() as db:
            rows = db.execute(
                "SELECT key FROM items WHERE status = ? ORDER BY created, key", (status,)
            ).fetchall()
        return [r[0] for r in rows]

    def counts(self, kind: str | None = None) -> dict[str, int]:
        """Items per status, of one kind (e.g. "log") or of all."""
        with self._db() as db:
            rows = db.execute(
                "SELECT status, COUNT(*) FROM items WHERE ? IS NULL OR kind = ? GROUP BY status", (kind, kind)
            ).fetchall()
        return {"pending": 0, "done": 0, "dead": 0, **dict(rows)}
