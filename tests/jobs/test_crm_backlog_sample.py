"""The worker's CRM backlog sample (crm.delivery_stats) reads only the deliveries not delivered
yet: on an outbox holding many delivered rows it uses the partial index and still counts every
unsettled state exactly (compared with a brute-force count of the table)."""

from __future__ import annotations

import json
import uuid

from app.services import crm
from db.repositories import crm as crm_repo
from db.session import Database


async def test_the_backlog_sample_skips_delivered_rows_and_counts_the_rest(db: Database, tenant: str) -> None:
    conversation = uuid.uuid4()
    async with db.pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", tenant)
        await conn.execute(
            "INSERT INTO conversations (tenant_id, id, session_id) VALUES ($1, $2, 'backlog')", tenant, conversation
        )
        await conn.execute(
            """INSERT INTO crm_outbox (tenant_id, id, conversation_id, trigger, status, attempts)
               SELECT $1, gen_random_uuid(), $2, 'closed',
                      CASE WHEN g <= 3 THEN 'pending' WHEN g <= 5 THEN 'failed' ELSE 'delivered' END,
                      CASE WHEN g = 1 THEN 2 WHEN g <= 3 THEN 0 ELSE 1 END
               FROM generate_series(1, 20000) g""",
            tenant,
            conversation,
        )
        await conn.execute("ANALYZE crm_outbox")
        plan = json.dumps(await conn.fetchval("EXPLAIN (FORMAT JSON) " + crm_repo.DELIVERY_STATS_SQL))
        brute = {
            r["state"]: r["n"]
            for r in await conn.fetch(
                """SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END AS state,
                          count(*) AS n
                   FROM crm_outbox WHERE status <> 'delivered' GROUP BY 1"""
            )
        }
    assert "ix_crm_outbox_unsettled" in plan, plan
    stats = await crm.delivery_stats(db)
    assert stats.by_state == {state: brute.get(state, 0) for state in crm.DELIVERY_STATES}
    assert stats.by_state["retrying"] >= 1 and stats.by_state["pending"] >= 2 and stats.by_state["failed"] >= 2
    assert "delivered" not in stats.by_state
    assert stats.oldest_undelivered_s >= 0
