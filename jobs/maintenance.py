"""Crons (arq `cron`): thin calls into app/services/maintenance.py with the worker's clock.

| cron | when | what |
|---|---|---|
| `maintenance.close_idle` | every minute | close sessions idle past their tenant's timeout (CLOSED event, CRM delivery) |
| `crm.sweep` | every 15 s | queue CRM deliveries that are due and held by no job |
| `maintenance.evict_cache` | every 5 minutes | evict cache entries of conversations no longer active |
| `maintenance.purge` | hourly (:17) | delete conversations closed before their tenant's retention cutoff |
| `maintenance.prune` | hourly (:47) | delete settled CRM deliveries and old action-log entries |
| `maintenance.fold_stats` | hourly (:37) | fold the stats rollup shards of past days into one row per key |
"""

from __future__ import annotations

from typing import Any

from arq.cron import CronJob, cron

from app.services import maintenance, stats
from jobs.context import state
from jobs.crm import crm_sweep


async def close_idle_sessions(ctx: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    closed = await maintenance.close_idle(st.db, st.clock(), st.maintenance)
    return {"closed": len(closed)}


async def evict_cold_cache(ctx: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    return {"evicted": await maintenance.evict_cold(st.db, st.redis)}


async def purge_expired(ctx: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    report = await maintenance.purge_expired(st.db, st.redis, st.clock(), st.maintenance)
    return {"conversations": report.total, "cache_entries": report.cache_entries}


async def prune_job_records(ctx: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    return await maintenance.prune_job_records(st.db, st.clock(), st.maintenance)


async def fold_stats(ctx: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    return {"folded": await stats.fold_rollups(st.db, st.clock())}


def cron_jobs(timeout_s: float) -> list[CronJob]:
    def every(name: str, coroutine: Any, **when: Any) -> CronJob:
        # unique: with many workers, each tick runs once; max_tries=1: the next tick is the retry.
        return cron(coroutine, name=name, unique=True, timeout=timeout_s, max_tries=1, keep_result=0, **when)

    return [
        every("maintenance.close_idle", close_idle_sessions, second={0}),
        every("crm.sweep", crm_sweep, second={0, 15, 30, 45}),
        every("maintenance.evict_cache", evict_cold_cache, minute=set(range(0, 60, 5)), second={30}),
        every("maintenance.purge", purge_expired, minute={17}, second={0}),
        every("maintenance.prune", prune_job_records, minute={47}, second={0}),
        every("maintenance.fold_stats", fold_stats, minute={37}, second={0}),
    ]
