"""How members are stored: one in-memory SQLite table for every list, compact (see the notes
below) and found through narrow covering indexes, so a million-member list pages in time
proportional to the page, not the list.
"""

from __future__ import annotations

import marshal

from mcsync.sim.mailchimp.model import _UNSUBSCRIBE_REASON

# Storage is compact because a list may hold millions of members:
# - ``lid`` is the list's web_id and ``hkey`` the first 64 bits of the subscriber hash (the
#   full hash is recomputed from the address and checked on every lookup);
# - times are INTEGER epoch seconds (NULL = unset; a NULL status_changed means last_changed);
# - merge fields are a ``marshal`` blob (never queried in SQL); interests are the comma-joined
#   ids set to true (filtered in SQL with instr); tags and location are JSON;
# - ``seq`` is given explicitly and never reused, so it stands for the member's identity.
_COLUMNS = (
    "seq",
    "lid",
    "hkey",
    "email",
    "status",
    "merge_fields",
    "interests",
    "tags",
    "last_changed",
    "status_changed",
    "timestamp_opt",
    "timestamp_signup",
    "ip_signup",
    "ip_opt",
    "email_type",
    "language",
    "vip",
    "source",
    "unsubscribe_reason",
    "location",
)
# Row fields whose change is a change of the member (and moves last_changed).
_CHANGE_FIELDS = (
    "email",
    "status",
    "merge_fields",
    "interests",
    "timestamp_opt",
    "timestamp_signup",
    "ip_signup",
    "ip_opt",
    "email_type",
    "language",
    "vip",
    "location",
)
_TABLE = """
CREATE TABLE members (seq INTEGER PRIMARY KEY, lid INTEGER, hkey INTEGER, email TEXT,
  status TEXT, merge_fields BLOB, interests TEXT DEFAULT '', tags TEXT DEFAULT '[]',
  last_changed INTEGER, status_changed INTEGER, timestamp_opt INTEGER, timestamp_signup INTEGER,
  ip_signup TEXT DEFAULT '', ip_opt TEXT DEFAULT '', email_type TEXT DEFAULT 'html',
  language TEXT DEFAULT '', vip INTEGER DEFAULT 0, source TEXT DEFAULT 'Import',
  unsubscribe_reason TEXT DEFAULT '', location TEXT);
CREATE TABLE forgotten (lid INTEGER, hkey INTEGER, PRIMARY KEY (lid, hkey)) WITHOUT ROWID;
"""
# Member pages are found inside narrow covering indexes (one per useful order), and only the
# page's rows are read from the table: skipping an offset walks index entries, not rows.
_INDEXES = """
CREATE UNIQUE INDEX members_hash ON members (lid, hkey);
CREATE INDEX members_changed ON members (lid, last_changed, seq, status);
CREATE INDEX members_order ON members (lid, seq, status, last_changed);
"""
_DROP_INDEXES = "DROP INDEX members_hash; DROP INDEX members_changed; DROP INDEX members_order;"
_INSERT = f"INSERT INTO members ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UPDATE = f"UPDATE members SET {', '.join(c + ' = ?' for c in _COLUMNS[1:])} WHERE seq = ?"
# Seeding binds only what varies; the rest are column defaults or derived here.
_SEED = (
    "INSERT INTO members (seq, lid, hkey, email, status, merge_fields, interests, "
    "last_changed, timestamp_opt, unsubscribe_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
    "CASE WHEN ?5 IN ('pending', 'transactional') THEN NULL ELSE ?8 END, "
    "CASE WHEN ?5 = 'unsubscribed' THEN '{reason}' ELSE '' END)"
)
_SEED = _SEED.format(reason=_UNSUBSCRIBE_REASON)
_BULK_SEED = 20_000  # above this many rows, indexes are rebuilt after the insert (much faster)
_EMPTY_MERGE = marshal.dumps({})
_SMALL_WINDOW = 50_000
_CACHE_SIZE = 256


def _hkey(subscriber_hash_hex: str) -> int | None:
    """The indexed 64-bit key of a subscriber hash (None if it is not one)."""
    try:
        return int.from_bytes(bytes.fromhex(subscriber_hash_hex[:16]), "big", signed=True)
    except ValueError:
        return None
