"""The program an SQL worker process runs: it holds one database copy and runs queries on it.

`sql_sandbox.py` runs this file's source with `python -I -S -c` and kills the process when a query
overruns its time limit: SQLite checks its progress handler only between virtual-machine steps, so
one slow function call (`printf('%.*c', 1000000000, 'x')`) runs on however long it takes. It may
import only the standard library. Messages both ways are a 4-byte little-endian length and a body;
a JSON request, then for "load" the serialized database as a second body.
"""

import json
import sqlite3
import struct
import sys
import time

# Authorizer actions a read-only SELECT needs; everything else (INSERT, UPDATE, DELETE, CREATE,
# DROP, ALTER, ATTACH, DETACH, PRAGMA, TRANSACTION, ...) is denied when the statement is prepared.
ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE})
MAX_VALUE_BYTES = 10_000_000  # no string or blob (e.g. randomblob(1e9)) may grow past this
PROGRESS_EVERY = 1000  # SQLite VM instructions between checks of the clock


def read_body():
    head = sys.stdin.buffer.read(4)
    if len(head) < 4:
        sys.exit(0)  # the host closed the pipe: it is gone or done with us
    (size,) = struct.unpack("<I", head)
    return sys.stdin.buffer.read(size)


def send(obj):
    data = json.dumps(obj).encode()
    sys.stdout.buffer.write(struct.pack("<I", len(data)) + data)
    sys.stdout.buffer.flush()


def authorize(action, *_):
    return sqlite3.SQLITE_OK if action in ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def load(data):
    """A locked-down in-memory database from the serialized bytes."""
    conn = sqlite3.connect(":memory:")
    conn.deserialize(data)
    conn.execute("PRAGMA query_only=ON")
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_authorizer(authorize)
    return conn


def encode(value):
    """JSON has no bytes: a blob travels as a one-element list of its hex (SQLite has no lists)."""
    return [value.hex()] if isinstance(value, bytes) else value


def run(conn, sql, timeout_s, max_rows):
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_EVERY)
    try:
        cur = conn.execute(sql)
        rows = []
        while batch := cur.fetchmany(1000):
            rows += batch
            if len(rows) > max_rows:
                return {"error": "result too large: more than %d rows" % max_rows}
        return {"rows": [[encode(v) for v in row] for row in rows]}
    except sqlite3.OperationalError as exc:
        if str(exc) == "interrupted":
            return {"error": "time limit exceeded (%g s)" % timeout_s}
        return {"error": "OperationalError: %s" % exc}
    except (sqlite3.Error, ValueError, OverflowError, MemoryError) as exc:
        return {"error": "%s: %s" % (exc.__class__.__name__, exc)}
    finally:
        conn.set_progress_handler(None, PROGRESS_EVERY)
        if conn.in_transaction:
            conn.rollback()


def main():
    conn = None
    while True:
        req = json.loads(read_body())
        if req["op"] == "load":
            if conn is not None:
                conn.close()
            conn = load(read_body())
            send({"loaded": True})
        else:
            send(run(conn, req["sql"], req["timeout_s"], req["max_rows"]))


if __name__ == "__main__":
    main()
