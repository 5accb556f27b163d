"""One run of the job: load → compute → store → publish → explain. ``run_forever`` repeats it.

A run needs PostgreSQL (points, predictions, watermarks) and the bus (stream configs for the
limits, ``dp.prediction.>``); when either fails the run fails as a whole and the next one
starts from the same watermarks. The AI explainer is optional and can never fail a run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from nats.js import JetStreamContext

from ml_batch import metrics
from ml_batch.explain import explain_pending
from ml_batch.legacy_sink import recent_legacy_predictions
from ml_batch.load import StreamWindows, load_postgres, load_sqlserver, load_watermarks
from ml_batch.predict import Params, compute
from ml_batch.settings import MlBatchSettings
from ml_batch.store import check_schema, publish_pending, save
from tributary_contracts import STREAM_CONFIGS_BUCKET, StreamConfig
from tributary_runtime.stream_configs import StreamConfigBucket
from tributary_sqlserver import build_engine
from tributary_sqlserver.predictions import write_predictions

log = structlog.get_logger(__name__)


@dataclass
class RunResult:
    streams: int = 0
    predictions: int = 0
    inserted: int = 0
    anomalies: int = 0
    threshold_events: int = 0
    published: int = 0
    explanations: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        timing = " ".join(f"{k}={v:.2f}s" for k, v in self.seconds.items())
        return (
            f"streams={self.streams} predictions={self.predictions} inserted={self.inserted} "
            f"anomalies={self.anomalies} threshold_events={self.threshold_events} "
            f"published={self.published} explanations={self.explanations or '-'} {timing}"
        )


def params_from(settings: MlBatchSettings) -> Params:
    return Params(
        window_points=settings.ml_window_points,
        min_points=settings.ml_min_points,
        horizon_points=settings.ml_horizon_points,
        default_model=settings.ml_model,
        model_by_type=tuple(settings.model_by_type.items()),
        ewma_alpha=settings.ml_ewma_alpha,
        taylor_points=settings.ml_taylor_points,
        score_points=settings.ml_score_points,
        anomaly_threshold=settings.ml_anomaly_threshold,
        explain_min_score=settings.ml_explain_min_score,
        explainer_configured=settings.ai_explainer_url is not None,
    )


async def read_configs(js: JetStreamContext, settings: MlBatchSettings) -> dict[str, StreamConfig]:
    """Every valid config of the ``stream-configs`` bucket by key."""
    kv = await js.key_value(settings.namespace.bucket(STREAM_CONFIGS_BUCKET))
    stored = await StreamConfigBucket(kv).list()
    return {s.scope.key: s.config for s in stored if s.config is not None}


def sqlserver_domains(settings: MlBatchSettings) -> list[str]:
    """Domains read from SQL Server: routed there by name, and only with MSSQL_DSN set."""
    if settings.mssql_dsn is None:
        return []
    return [d for d, sink in settings.routes.routes if sink == "sqlserver" and d != "*"]


class MlJob:
    def __init__(
        self, settings: MlBatchSettings, pool: asyncpg.Pool, js: JetStreamContext
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js
        self.params = params_from(settings)
        self._engine: Any = None

    async def run_once(self) -> RunResult:
        s = self.settings
        result = RunResult()
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            result.seconds[name] = now - clock
            clock = now

        computed_at = datetime.now(UTC)
        since = computed_at - timedelta(seconds=s.ml_recent_seconds)
        legacy = sqlserver_domains(s)
        async with self.pool.acquire() as conn:
            await check_schema(conn)
            configs = await read_configs(self.js, s)
            loaded = await load_postgres(
                conn, since=since, window=s.ml_window_points, max_streams=s.ml_max_streams,
                exclude_domains=legacy,
            )
            for domain in legacy:
                loaded.extend(await self._load_legacy(conn, domain, since))
        lap("load")
        result.streams = len(loaded)
        metrics.STREAMS.inc(len(loaded))
        rows = await asyncio.to_thread(compute, loaded, configs, self.params, computed_at)
        lap("compute")
        result.predictions = len(rows)
        result.anomalies = sum(r.is_anomaly for r in rows)
        result.threshold_events = sum(len(r.threshold_events) for r in rows)
        marks = [(*key, last) for key, last in zip(loaded.keys, loaded.last_times, strict=True)]
        async with self.pool.acquire() as conn:
            result.inserted = await save(conn, rows, marks)
            lap("store")
            result.published = await publish_pending(conn, self.js, s.namespace)
            lap("publish")
        metrics.WRITTEN.inc(result.inserted)
        metrics.PUBLISHED.inc(result.published)
        metrics.ANOMALIES.inc(result.anomalies)
        metrics.THRESHOLD_EVENTS.inc(result.threshold_events)
        if s.ai_explainer_url is not None:
            result.explanations = await explain_pending(
                self.pool, s.ai_explainer_url, min_score=s.ml_explain_min_score,
                max_attempts=s.ml_explain_max_attempts, batch=s.ml_explain_batch,
                concurrency=s.ml_explain_concurrency, timeout=s.ml_explain_timeout_seconds,
                budget=s.ml_explain_budget_seconds,
            )
            lap("explain")
        if legacy:
            await self.copy_to_sqlserver(legacy, since)
            lap("sqlserver")
        return result

    async def copy_to_sqlserver(self, domains: list[str], since: datetime) -> None:
        """This window's predictions of the SQL Server domains into dbo.predictions (see
        ``legacy_sink``); a failure is logged and counted, the next run copies them again."""
        try:
            async with self.pool.acquire() as conn:
                rows = await recent_legacy_predictions(conn, domains, since)
            inserted, explained = await asyncio.to_thread(
                write_predictions, self._sqlserver(), rows
            )
        except Exception as exc:
            metrics.ERRORS.labels("write_sqlserver", type(exc).__name__).inc()
            log.warning("predictions not copied to sql server this run", domains=domains,
                        error=f"{type(exc).__name__}: {exc}"[:500])
            return
        metrics.SQLSERVER_PREDICTIONS.labels("inserted").inc(inserted)
        metrics.SQLSERVER_PREDICTIONS.labels("explained").inc(explained)

    def _sqlserver(self) -> Any:
        if self._engine is None:
            assert self.settings.mssql_dsn is not None
            self._engine = build_engine(
                self.settings.mssql_dsn.get_secret_value(),
                odbc_driver=self.settings.mssql_odbc_driver,
                tds_version=self.settings.mssql_tds_version,
                timeout=60,
                pool_size=1,
            )
        return self._engine

    async def _load_legacy(
        self, conn: asyncpg.Connection, domain: str, since: datetime
    ) -> StreamWindows:
        """SQL Server windows of ``domain``; a failure is logged and that source skipped this
        run, so PostgreSQL streams are never held up by it."""
        assert self.settings.mssql_dsn is not None
        marks = await load_watermarks(conn, domain)
        try:
            return await asyncio.to_thread(
                load_sqlserver, self.settings.mssql_dsn.get_secret_value(), domain=domain,
                odbc_driver=self.settings.mssql_odbc_driver,
                tds_version=self.settings.mssql_tds_version, since=since,
                window=self.settings.ml_window_points,
                max_streams=self.settings.ml_max_streams, watermarks=marks,
            )
        except Exception as exc:
            metrics.ERRORS.labels("load_sqlserver", type(exc).__name__).inc()
            log.warning("sql server not read this run", domain=domain,
                        error=f"{type(exc).__name__}: {exc}"[:500])
            return StreamWindows()


async def run_and_log(job: MlJob) -> RunResult | None:
    """One run; failures are counted and logged (one line), never raised."""
    started = time.perf_counter()
    try:
        result = await job.run_once()
    except Exception as exc:
        metrics.RUNS.labels("failed").inc()
        metrics.ERRORS.labels("run", type(exc).__name__).inc()
        log.warning("ml run failed; retrying next interval", error=f"{type(exc).__name__}: {exc}")
        return None
    metrics.RUNS.labels("ok").inc()
    metrics.RUN_SECONDS.observe(time.perf_counter() - started)
    metrics.LAST_SUCCESS.set(time.time())
    log.info("ml run done", **{k: v for k, v in asdict(result).items() if k != "seconds"},
             seconds={k: round(v, 3) for k, v in result.seconds.items()})
    return result


async def run_forever(job: MlJob, interval: float, stopping: asyncio.Event) -> None:
    """Run, then wait ``interval`` seconds (or until ``stopping``), until ``stopping``."""
    while not stopping.is_set():
        await run_and_log(job)
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval)
        except TimeoutError:
            pass
