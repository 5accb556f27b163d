"""Unit tests of the console's domain code: read scope, chart, bucket widths, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from console.chart import CLASS_COLOURS, render_chart
from console.queries import BadQuery, TimeRange, bucket_seconds, decode_cursor, encode_cursor
from console.scope import ReadScope
from console.settings import parse_service_urls
from tributary_access.apikeys import ApiKeyRecord, Role

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(role: Role, sources: list[str], domains: list[str]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id="0123456789ab",
        secret_sha256="0" * 64,
        role=role,
        source_ids=sources,
        domains=domains,
        created_at=T0,
    )


@pytest.mark.parametrize(
    ("role", "sources", "domains", "asked", "allowed"),
    [
        (Role.READ_ONLY, ["*"], ["*"], ("any", "thing"), True),
        (Role.ADMIN, ["*"], ["*"], ("any", "thing"), True),
        (Role.SOURCE_WRITER, ["s1"], ["d"], ("d", "s1"), True),
        (Role.SOURCE_WRITER, ["s1"], ["d"], ("d", "s2"), False),
        (Role.SOURCE_WRITER, ["s1"], ["d"], ("e", "s1"), False),
        (Role.SOURCE_WRITER, ["*"], ["d"], ("d", "s9"), True),
        (Role.SOURCE_WRITER, ["s1"], ["*"], ("e", "s1"), True),
        (Role.SOURCE_WRITER, ["s1"], ["d"], ("d", "*"), False),
    ],
)
def test_read_scope_follows_the_write_scope(
    role: Role, sources: list[str], domains: list[str], asked: tuple[str, str], allowed: bool
) -> None:
    scope = ReadScope.of(record(role, sources, domains))

    assert scope.allows(*asked) is allowed
    assert (scope.refusal(*asked) is None) is allowed


def test_a_scoped_key_sees_the_default_configs_of_its_domain_only() -> None:
    scope = ReadScope.of(record(Role.SOURCE_WRITER, ["s1"], ["d"]))

    assert scope.allows_config("d", "*") and scope.allows_config("*", "*")
    assert not scope.allows_config("e", "*") and not scope.allows_config("d", "s2")


def test_bucket_width_cuts_a_range_into_at_most_n_buckets() -> None:
    assert bucket_seconds(TimeRange(T0, T0 + timedelta(hours=1)), 400) == 9.0
    assert bucket_seconds(TimeRange(T0, T0 + timedelta(seconds=1)), 400) == 0.003


def test_a_cursor_round_trips_and_a_forged_one_is_422() -> None:
    assert decode_cursor(encode_cursor(["2026-12-01T12:00:00Z", "a"]), [datetime, str]) == [T0, "a"]
    with pytest.raises(BadQuery):
        decode_cursor(encode_cursor([1, 2]), [datetime, str])
    with pytest.raises(BadQuery):
        decode_cursor("%%%", [int])


def test_the_chart_colours_points_by_class_and_draws_alert_spans() -> None:
    rows = [
        {"time": T0 + timedelta(seconds=i), "value": float(i), "cls": cls}
        for i, cls in enumerate(["normal", "warning", "critical"])
    ]
    alerts = [
        {
            "opened_at": T0 + timedelta(seconds=1),
            "closed_at": None,
            "severity": "critical",
            "status": "open",
            "reason": "too hot <b>",
        }
    ]

    svg = render_chart(rows, alerts, T0, T0 + timedelta(seconds=10), downsampled=False)

    for cls in ("normal", "warning", "critical"):
        assert svg.count(f'class="point cls-{cls}"') == 1
        assert f'fill="{CLASS_COLOURS[cls]}"' in svg
    assert svg.count('class="alert-span"') == 1
    assert "too hot &lt;b&gt;" in svg and "<b>" not in svg


def test_fleet_services_setting_is_parsed_or_refused() -> None:
    assert parse_service_urls("a=http://x:1, b=https://y") == {"a": "http://x:1", "b": "https://y"}
    assert "console" not in parse_service_urls("")
    with pytest.raises(ValueError, match="name=http"):
        parse_service_urls("a=ftp://x")
