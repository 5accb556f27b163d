"""Which database failures are worth a retry: the declared transient/permanent split.

*Transient* — the same write may succeed later (connection lost, server restarting, deadlock,
timeout): the fetch is retried (``tributary_runtime.delivery``: nak with backoff).
*Permanent* — the data itself is refused (bad value, constraint, type): retrying cannot help, so
the writer isolates the offending rows, sends them to the DLQ with their reason and stores the rest.

PostgreSQL errors are decided by SQLSTATE class (first two characters); client-side errors by
exception type. Anything not listed is treated as transient: a retry costs a delay, while a wrong
"permanent" verdict would move good rows to the DLQ; after ``MAX_DELIVER`` deliveries a message
that keeps failing goes to the DLQ anyway, so nothing is retried forever.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

import asyncpg


class Failure(StrEnum):
    """Kind of failure of a write."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


SQLSTATE_CLASSES: dict[str, tuple[Failure, str]] = {
    "08": (Failure.TRANSIENT, "connection exception"),
    "40": (Failure.TRANSIENT, "transaction rollback: serialization failure 40001, deadlock 40P01"),
    "53": (Failure.TRANSIENT, "insufficient resources: disk full, out of memory, too many conns"),
    "55": (Failure.TRANSIENT, "object not in prerequisite state: lock not available 55P03"),
    "57": (Failure.TRANSIENT, "operator intervention: shutdown 57P01-02, cannot connect 57P03, "
                              "statement timeout 57014"),
    "58": (Failure.TRANSIENT, "system error: I/O error"),
    "XX": (Failure.TRANSIENT, "internal error (retried, then DLQ after max deliveries)"),
    "0A": (Failure.PERMANENT, "feature not supported"),
    "21": (Failure.PERMANENT, "cardinality violation"),
    "22": (Failure.PERMANENT, "data exception: bad value, NUL byte 22021, \\u0000 in jsonb 22P05"),
    "23": (Failure.PERMANENT, "integrity constraint: not null, check, foreign key (the unique "
                              "key is handled by ON CONFLICT DO NOTHING)"),
    "42": (Failure.PERMANENT, "syntax error or access rule violation"),
    "54": (Failure.PERMANENT, "program limit exceeded: value or row too large"),
}
"""SQLSTATE class → verdict and what it covers (the table in the README)."""

CLIENT_ERRORS: tuple[tuple[type[BaseException], Failure, str], ...] = (
    # Order matters: the first matching type wins (DataError is also an InterfaceError).
    (asyncpg.exceptions._base.DataError, Failure.PERMANENT, "a value asyncpg cannot encode"),
    (UnicodeError, Failure.PERMANENT, "text that is not valid UTF-8 (lone surrogate)"),
    (asyncpg.exceptions.InterfaceError, Failure.TRANSIENT, "client state: connection closed"),
    (asyncpg.exceptions.InternalClientError, Failure.TRANSIENT, "client protocol error"),
    (asyncio.TimeoutError, Failure.TRANSIENT, "timeout (statement or pool acquire)"),
    (OSError, Failure.TRANSIENT, "network: refused, reset, unreachable"),
)
"""Client-side exception type → verdict (checked when the error has no SQLSTATE)."""


def classify_error(exc: BaseException) -> Failure:
    """Transient or permanent, per the tables above; unknown errors are transient."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.PostgresError) and isinstance(sqlstate, str):
        verdict = SQLSTATE_CLASSES.get(sqlstate[:2])
        return verdict[0] if verdict else Failure.TRANSIENT
    for error_type, failure, _ in CLIENT_ERRORS:
        if isinstance(exc, error_type):
            return failure
    return Failure.TRANSIENT


def describe_error(exc: BaseException) -> str:
    """One line for the DLQ reason and logs: SQLSTATE (when any) and the server's message."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{sqlstate}: {text}" if sqlstate else f"{type(exc).__name__}: {text}"
