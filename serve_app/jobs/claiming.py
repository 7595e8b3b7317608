"""The claim statement: which queued jobs a worker takes next, race-free on SQLite and Postgres.

Order (the fairness rule), most significant first:
  1. priority: critical before normal (a higher class bypasses a lower one, as in Triton);
  2. turn: the job's position in its agent's own queue (0 for each agent's oldest job, 1 for the next...),
     so every agent with work gets one job before any agent gets a second: round-robin;
  3. when the agent was last served (its latest claim; never served first), so that across claims the
     rotation continues instead of restarting with the agent whose jobs are oldest;
  4. age (created_at, then position in the batch).
An agent's 100-image batch therefore takes every other slot at most while another agent has work.

Concurrency: the whole claim is ONE ``UPDATE jobs ... WHERE id IN (<pick>) AND status = 'queued'
RETURNING``. On Postgres the pick locks its rows ``FOR UPDATE SKIP LOCKED``: concurrent claimers take
disjoint rows without waiting, and a row another claimer committed meanwhile is re-checked and dropped by
the status condition. SQLite has no row locks; there a single write statement takes the database write
lock before it reads anything (the busy timeout makes claimers queue for it), so the pick and the update
see the same state and no row can be claimed twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Update, and_, case, func, or_, select, update

from serve_app.jobs.models import JOBS


def claim_statement(*, worker_id: str, limit: int, lease_s: float, now: datetime, row_locks: bool) -> Update:
    """``UPDATE ... RETURNING`` every column of up to ``limit`` jobs now claimed by ``worker_id``.

    ``row_locks``: render ``FOR UPDATE SKIP LOCKED`` (Postgres); leave False on SQLite.
    """
    queued = JOBS.alias("queued")
    served = JOBS.alias("served")
    picked = JOBS.alias("picked")

    priority_class = case((queued.c.priority == "critical", 0), else_=1)
    last_served = select(func.max(served.c.claimed_at)).where(served.c.agent == queued.c.agent).scalar_subquery()
    # A job past its deadline is never started (expire_overdue marks it); one that already ran once and
    # was requeued after a crash keeps its place: its deadline was about starting, and it started.
    startable = or_(queued.c.deadline_at.is_(None), queued.c.deadline_at >= now, queued.c.attempts > 0)
    ranked = (
        select(
            queued.c.id,
            priority_class.label("priority_class"),
            func.row_number()
            .over(
                partition_by=(queued.c.agent, priority_class),
                order_by=(queued.c.created_at, queued.c.batch_index, queued.c.id),
            )
            .label("turn"),
            last_served.label("last_served"),
            queued.c.created_at,
            queued.c.batch_index,
        )
        .where(queued.c.status == "queued", startable)
        .subquery("ranked")
    )
    pick = (
        select(picked.c.id)
        .join(ranked, ranked.c.id == picked.c.id)
        .where(picked.c.status == "queued")
        .order_by(
            ranked.c.priority_class,
            ranked.c.turn,
            ranked.c.last_served.asc().nulls_first(),
            ranked.c.created_at,
            ranked.c.batch_index,
            ranked.c.id,
        )
        .limit(limit)
    )
    if row_locks:
        pick = pick.with_for_update(skip_locked=True, of=picked)
    # MATERIALIZED: the pick runs exactly once. As a plain ``IN (subquery)`` Postgres may re-run it during
    # the update and, skipping the rows it just locked, return (and update) more than ``limit`` rows.
    chosen = pick.cte("chosen").prefix_with("MATERIALIZED")

    return (
        update(JOBS)
        .where(and_(JOBS.c.id.in_(select(chosen.c.id)), JOBS.c.status == "queued"))
        .values(
            status="running",
            stage="generating",
            progress=10,
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=JOBS.c.attempts + 1,
            started_at=func.coalesce(JOBS.c.started_at, now),
            claimed_at=now,
        )
        .returning(*JOBS.c)
    )
