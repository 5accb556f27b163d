"""The declared transient/permanent table of database errors."""

from __future__ import annotations

import asyncpg
import pytest

from writer_postgres.errors import SQLSTATE_CLASSES, Failure, classify_error, describe_error

T, P = Failure.TRANSIENT, Failure.PERMANENT


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # connection and server state: retry later
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), T),
        (asyncpg.ConnectionFailureError("08006"), T),
        (asyncpg.exceptions.ClientCannotConnectError("08001"), T),
        (asyncpg.SerializationError("could not serialize access"), T),
        (asyncpg.DeadlockDetectedError("deadlock detected"), T),
        (asyncpg.TooManyConnectionsError("too many clients"), T),
        (asyncpg.exceptions.DiskFullError("no space left"), T),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), T),
        (asyncpg.exceptions.CrashShutdownError("57P02"), T),
        (asyncpg.CannotConnectNowError("the database system is starting up"), T),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), T),
        (asyncpg.LockNotAvailableError("could not obtain lock"), T),
        (asyncpg.InternalServerError("XX000"), T),
        (asyncpg.InterfaceError("cannot call Connection.execute(): connection is closed"), T),
        (TimeoutError(), T),
        (TimeoutError(), T),
        (ConnectionRefusedError(111, "Connection refused"), T),
        (ConnectionResetError(), T),
        (OSError("Network is unreachable"), T),
        (RuntimeError("something nobody declared"), T),
        # the data itself is refused: isolate and dead-letter
        (asyncpg.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"), P),
        (asyncpg.UntranslatableCharacterError("unsupported Unicode escape sequence"), P),
        (asyncpg.NumericValueOutOfRangeError("value out of range"), P),
        (asyncpg.InvalidTextRepresentationError("invalid input syntax"), P),
        (asyncpg.NotNullViolationError("null value in column"), P),
        (asyncpg.CheckViolationError("violates check constraint"), P),
        (asyncpg.ForeignKeyViolationError("violates foreign key constraint"), P),
        (asyncpg.UndefinedColumnError("column does not exist"), P),
        (asyncpg.PostgresSyntaxError("syntax error"), P),
        (asyncpg.exceptions.ProgramLimitExceededError("row is too big"), P),
        (asyncpg.exceptions.DataError("22000"), P),
        (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), P),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), P),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_error_is_classified_as_declared(error: BaseException, expected: Failure) -> None:
    assert classify_error(error) is expected


def test_unknown_sqlstate_class_is_transient() -> None:
    error = asyncpg.PostgresError("mystery")
    error.sqlstate = "ZZ999"  # type: ignore[attr-defined]
    assert classify_error(error) is Failure.TRANSIENT


def test_table_declares_the_required_classes() -> None:
    verdicts = {code: verdict for code, (verdict, _) in SQLSTATE_CLASSES.items()}
    assert {c: verdicts[c] for c in ("08", "40", "53", "57")} == dict.fromkeys(
        ("08", "40", "53", "57"), T
    )
    assert {c: verdicts[c] for c in ("22", "23", "42")} == dict.fromkeys(("22", "23", "42"), P)


def test_describe_error_names_sqlstate_and_flattens_the_message() -> None:
    error = asyncpg.CheckViolationError('new row violates\ncheck constraint "positive"')
    assert describe_error(error) == '23514: new row violates check constraint "positive"'
    assert describe_error(TimeoutError()) == "TimeoutError: TimeoutError"


@pytest.mark.integration
async def test_a_value_asyncpg_cannot_encode_is_permanent(servers: object) -> None:
    conn = await asyncpg.connect(servers.postgres_dsn)  # type: ignore[attr-defined]
    try:
        with pytest.raises(Exception) as refused:
            await conn.execute("SELECT $1::double precision", "not a number")
    finally:
        await conn.close()
    assert classify_error(refused.value) is Failure.PERMANENT
