"""The benchmark's outputs: a short Markdown table and a PNG chart over time (JSON is run.py's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _n(value: object) -> str:
    if isinstance(value, float) and value != value:  # NaN
        return "–"
    if isinstance(value, int | float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"# Tributary benchmark — {result['started_at']}",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
        f"Python {machine['python']}, {machine['postgres']}, nats-server {machine['nats_server']}, "
        f"{machine['mosquitto']}; load average {machine['loadavg_start']} at start, "
        f"{machine['loadavg_end']} at the end. Commit {machine['commit']}.",
        "",
        f"Options: {result['options_line']}",
        "",
        "| transport | phase | offered pts/s | acked pts/s | e2e pts/s (to rows) | ack p50 ms "
        "| p95 ms | p99 ms | lag max / after | stored exactly once |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        check = result["verification"]["groups"].get(f"{p['transport']}-{p['phase']}", {})
        lines.append(
            f"| {p['transport']} | {p['phase']} | {_n(p['offered_points_per_s'])} "
            f"| {_n(p['acked_points_per_s'])} | {_n(p['e2e_points_per_s'])} "
            f"| {_n(p['ack_ms']['p50'])} | {_n(p['ack_ms']['p95'])} | {_n(p['ack_ms']['p99'])} "
            f"| {p['lag_max']} / {p['lag_after']} "
            f"| {'yes' if check.get('ok') else 'NO'} ({check.get('rows', 0):,} of "
            f"{check.get('sent', 0):,}) |"
        )
    lines.append("")
    for transport in dict.fromkeys(p["transport"] for p in result["phases"]):
        meaning = next(p["ack_meaning"] for p in result["phases"] if p["transport"] == transport)
        lines.append(f"- {transport} ack: {meaning}.")
    for p in result["phases"]:
        if "drain_seconds" in p:
            lines.append(
                f"- {p['transport']} {p['phase']}: classifier paused while "
                f"{p['points_acked']:,} single-reading messages were acknowledged (lag "
                f"{p['drain_backlog']}); resumed, every point was a row and every lag 0 after "
                f"{p['drain_seconds']} s: **{_n(p['drain_points_per_s'])} points/s** drained."
            )
    errors = {
        f"{p['transport']}-{p['phase']}": p["errors"] for p in result["phases"] if p["errors"]
    }
    if errors:
        lines.append(f"- Refusals/errors seen by the load generators: {errors}.")
    lines += ["", "| figure | value | physical limit | value | ratio |", "|---|---|---|---|---|"]
    for r in result["ratios"]:
        lines.append(
            f"| {r['figure']} | {_n(r['value'])} | {r['limit']} | {_n(r['limit_value'])} "
            f"| {r['ratio']:.2f} |"
        )
    services = sorted({s for p in result["phases"] for s in p["cpu_percent"]})
    cores = machine["cores"]
    lines += [
        "",
        "CPU, % of one core over each saturation phase's sending time (/proc utime+stime; "
        f"*all* near {cores * 100} % means this {cores}-core machine, not one service, is the "
        "limit; the load generators run on it too):",
        "",
        "| transport | all | " + " | ".join(services) + " |",
        "|---|---|" + "---|" * len(services),
    ]
    for p in result["phases"]:
        if p["phase"].endswith("saturation"):
            cells = " | ".join(_n(p["cpu_percent"].get(s, float("nan"))) for s in services)
            lines.append(f"| {p['transport']} | {_n(sum(p['cpu_percent'].values()))} | {cells} |")
    lines += ["", *cpu_per_point(result), ""]
    rss = ", ".join(f"{k} {v} MiB" for k, v in result["peak_rss_mib"].items())
    lines += ["", f"Peak RSS (VmHWM): {rss}.", ""]
    verification = result["verification"]
    lines.append(
        "Verification: every acknowledged point is one row in PostgreSQL — "
        + ("**yes**" if verification["ok"] else "**NO: DATA LOST OR DOUBLED, see the JSON**")
        + f"; duplicates absorbed by ON CONFLICT: {verification['writer_duplicates_absorbed']}."
    )
    if result.get("not_available"):
        lines.append(f"Not available: {', '.join(result['not_available'])}.")
    return "\n".join(lines) + "\n"


RECEIVER = {
    "http": "gateway-http",
    "ws": "gateway-ws",
    "mqtt": "gateway-mqtt",
    "csv": "csv-importer",
}
CPU_COLUMNS = (
    "gateway",
    "classifier",
    "writer-postgres",
    "other services",
    "bench (load generators)",
    "nats-server (shared)",
    "postgres (this database + background)",
    "mosquitto (shared)",
)


def cpu_columns(phase: dict[str, Any]) -> dict[str, float]:
    """A phase's CPU µs per point, grouped: the transport's receiver as ``gateway``, every
    classifier replica as ``classifier``, the fleet's idle services as ``other services``; the
    shared servers less what they used while the fleet was idle."""
    receiver = RECEIVER[phase["transport"]]
    out = dict.fromkeys(CPU_COLUMNS, 0.0)
    for name, us in (phase["cpu_us_per_point"] | phase["cpu_us_per_point_less_idle"]).items():
        if name == receiver:
            out["gateway"] += us
        elif name.startswith("classifier"):
            out["classifier"] += us
        elif name in out:
            out[name] += us
        else:
            out["other services"] += us
    return out


def cpu_per_point(result: dict[str, Any]) -> list[str]:
    """The CPU budget per acknowledged point of every phase, per process."""
    cores = result["machine"]["cores"]
    lines = [
        "CPU µs per acknowledged point, from the phase's first send until its last point is a "
        "row (/proc utime+stime deltas; PostgreSQL: this run's database's backends and the "
        "server's background writers; nats-server and Mosquitto, shared with anything else on "
        "the machine: less their CPU rate in the idle second before the phase, so noisy on a "
        f"busy machine). *fleet* leaves out the load generators; {cores} cores ÷ *all* is the "
        "most points/s this machine could do at that cost:",
        "",
        "| transport | phase | "
        + " | ".join(c.removesuffix(" (this database + background)") for c in CPU_COLUMNS)
        + " | fleet | all | cores ÷ all, pts/s |",
        "|---|---|" + "---|" * (len(CPU_COLUMNS) + 3),
    ]
    for p in result["phases"]:
        cols = cpu_columns(p)
        total = sum(cols.values())
        fleet = total - cols["bench (load generators)"]
        lines.append(
            f"| {p['transport']} | {p['phase']} | "
            + " | ".join(f"{v:.1f}" for v in cols.values())
            + f" | {fleet:.1f} | {total:.1f} | {_n(cores * 1e6 / total) if total > 0 else '–'} |"
        )
    return lines


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["timeline"]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    colours = {"http": "tab:blue", "ws": "tab:orange", "mqtt": "tab:green", "csv": "tab:purple"}
    for p in result["phases"]:
        colour = colours.get(p["transport"], "grey")
        for ax in (ax1, ax2, ax3):
            ax.axvspan(
                p["t_start"],
                p["t_end"],
                color=colour,
                alpha=0.08 if p["phase"] == "fixed" else 0.18,
            )
        ax1.text(
            p["t_start"],
            1.0,
            f"{p['transport']} {p['phase'][:3]}",
            fontsize=7,
            transform=ax1.get_xaxis_transform(),
            va="bottom",
        )
    acks = timeline["acks"]
    ax1.plot([a["t"] for a in acks], [a["points"] for a in acks], label="acked points/s")
    samples = timeline["samples"]
    ax1.plot(
        [s["t"] for s in samples],
        [s["rows_per_s"] for s in samples],
        label="rows written/s (writer-postgres)",
    )
    ax1.set_ylabel("points/s")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot([a["t"] for a in acks], [a["p50_ms"] for a in acks], label="ack p50")
    ax2.plot([a["t"] for a in acks], [a["p99_ms"] for a in acks], label="ack p99")
    ax2.set_yscale("log")
    ax2.set_ylabel("ack latency, ms")
    ax2.legend(loc="upper right", fontsize=8)
    ax3.plot(
        [s["t"] for s in samples],
        [s["lag"].get("classifier", 0) for s in samples],
        label="classifier pending",
    )
    ax3.plot(
        [s["t"] for s in samples],
        [s["lag"].get("writer-postgres", 0) for s in samples],
        label="writer-postgres pending",
    )
    ax3.set_ylabel("consumer lag, msgs")
    ax3.set_xlabel(
        "seconds since the fleet was ready (shaded: light = fixed load, dark = saturation)"
    )
    ax3.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"Tributary benchmark {result['started_at']} (noisy: shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
