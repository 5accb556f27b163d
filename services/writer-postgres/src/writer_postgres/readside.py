"""Named read-side SQL shipped with the schema (``queries/*.sql``): what operators and tests run.

A file holds queries separated by ``-- name: <name>`` lines; ``named_queries("mixed_formats")``
returns them by name, in file order.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.M)


def named_queries(file: str) -> dict[str, str]:
    """The queries of ``queries/<file>.sql`` by name."""
    text = resources.files("writer_postgres").joinpath(f"queries/{file}.sql").read_text("utf-8")
    parts = _NAME.split(text)[1:]
    return {name: sql.strip() for name, sql in zip(parts[::2], parts[1::2], strict=True)}
