"""Which database failures are worth a retry: the declared transient/permanent split, by SQLSTATE.

*Transient* — the same write may succeed later (connection lost, deadlock victim, timeout, login
refused, missing table or permission): the fetch is retried (``tributary_runtime.delivery``:
nak with backoff) and the circuit breaker counts it.
*Permanent* — the data itself is refused (bad value, constraint): the writer isolates the
refused rows, sends them to the DLQ with the database's reason and stores the rest.

pyodbc reports the ODBC SQLSTATE as the first argument of its exceptions (``('23000', '[23000]
[FreeTDS][SQL Server]Violation of UNIQUE KEY …')``); the PostgreSQL stand-in (psycopg2) as
``pgcode``. SQLAlchemy wraps both (``DBAPIError.orig``). Errors with no SQLSTATE are decided by
type; anything not listed is transient — a wrong "permanent" would dead-letter good rows.
"""

from __future__ import annotations

import re
from enum import StrEnum

from sqlalchemy import exc as sa_exc

from writer_sqlserver.store import UnmappablePoint


class Failure(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


SQLSTATE_PREFIXES: tuple[tuple[str, Failure, str], ...] = (
    ("08", Failure.TRANSIENT, "connection failure (08001 cannot connect, 08S01 link failure)"),
    ("40", Failure.TRANSIENT, "transaction rollback: deadlock victim 1205 (40001)"),
    ("HYT", Failure.TRANSIENT, "timeout: query HYT00, connection HYT01"),
    ("HY", Failure.TRANSIENT, "driver general error (HY000), e.g. lock request timeout 1222"),
    ("IM", Failure.TRANSIENT, "ODBC driver manager: driver or DSN not found (operator must act)"),
    ("28", Failure.TRANSIENT, "login failed (operator must act; breaker opens)"),
    ("42", Failure.TRANSIENT, "missing object 42S02/42S22, permission 229 or syntax (42000): "
                              "not the data's fault; retried, then DLQ after max deliveries"),
    ("21", Failure.PERMANENT, "cardinality violation"),
    ("22", Failure.PERMANENT, "data exception: truncation 22001, out of range 22003, "
                              "conversion 22018, invalid datetime 22007/22008"),
    ("23", Failure.PERMANENT, "integrity constraint: unique 2627/2601, check or foreign key 547"),
    ("0A", Failure.PERMANENT, "feature not supported"),
    ("54", Failure.PERMANENT, "program limit exceeded (stand-in: row too large)"),
)
"""SQLSTATE prefix → verdict (longest prefix first where they overlap); the README's table."""

_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE a driver error carries (pyodbc: ``args[0]``; psycopg2: ``pgcode``)."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    if isinstance(code, str) and _SQLSTATE.match(code):
        return code
    args = getattr(orig, "args", ())
    if type(orig).__module__ == "pyodbc" and args and isinstance(args[0], str) \
            and _SQLSTATE.match(args[0]):
        return args[0]
    return None


def classify_error(exc: BaseException) -> Failure:
    """Transient or permanent, per ``SQLSTATE_PREFIXES`` and the types below."""
    if isinstance(exc, UnmappablePoint):
        return Failure.PERMANENT
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return Failure.TRANSIENT
    sqlstate = sqlstate_of(exc)
    if sqlstate is not None:
        for prefix, failure, _ in SQLSTATE_PREFIXES:
            if sqlstate.startswith(prefix):
                return failure
        return Failure.TRANSIENT
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        return Failure.PERMANENT  # a value the driver could not bind: the data's fault
    return Failure.TRANSIENT  # pool timeout, OSError, unknown: retry, DLQ after max deliveries


def describe_error(exc: BaseException) -> str:
    """One line for the DLQ reason and logs: SQLSTATE (when any) and the driver's message."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    sqlstate = sqlstate_of(exc)
    args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
    if type(orig).__module__ == "pyodbc" and len(args) >= 2:
        message = str(args[1])
    else:
        message = str(orig)
    text = " ".join(message.split()) or type(orig).__name__
    return f"{sqlstate}: {text}" if sqlstate else f"{type(orig).__name__}: {text}"
