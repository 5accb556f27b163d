"""Every MSSQL_DSN form → the SQLAlchemy URL every process opens (writer, ml-batch, gateway-http,
the CLI), and one clear error for what is none of them."""

from __future__ import annotations

import pytest

from tributary_sqlserver import engine_url, is_stand_in

ODBC = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=db;DATABASE=iot;UID=sa;PWD=pw"
CASES = [
    # (dsn, driver setting, drivername, query)
    ("mssql://sa:pw@db:1433/iot", "FreeTDS", "mssql+pyodbc",
     {"driver": "FreeTDS", "TDS_Version": "7.4"}),
    ("mssql://sa:pw@db:1433/iot", "ODBC Driver 18 for SQL Server", "mssql+pyodbc",
     {"driver": "ODBC Driver 18 for SQL Server"}),
    ("mssql+pyodbc://sa:pw@db/iot?driver=ODBC+Driver+17+for+SQL+Server", "FreeTDS",
     "mssql+pyodbc", {"driver": "ODBC Driver 17 for SQL Server"}),
    (ODBC, "FreeTDS", "mssql+pyodbc", {"odbc_connect": ODBC}),
    ("postgresql://postgres@127.0.0.1:5432/standin", "FreeTDS", "postgresql+psycopg2", {}),
]  # fmt: skip


@pytest.mark.parametrize(("dsn", "driver", "drivername", "query"), CASES)
def test_every_dsn_form_names_its_driver(
    dsn: str, driver: str, drivername: str, query: dict[str, str]
) -> None:
    url = engine_url(dsn, driver)
    assert (url.drivername, dict(url.query)) == (drivername, query)
    assert is_stand_in(url) == drivername.startswith("postgresql")


@pytest.mark.parametrize(
    ("dsn", "words"),
    [("", "empty"), ("sqlserver-01", "must be a URL"), ("mysql://u@h/db", "neither mssql")],
)
def test_a_dsn_of_no_known_form_is_refused_naming_why(dsn: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        engine_url(dsn)
