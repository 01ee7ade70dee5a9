"""Connection pool and the unit of work the edges (resolvers, jobs) own.

We talk to Postgres through asyncpg directly: a durable append is one SQL
statement, and the ORM layer's per-statement overhead would cost a third of
the throughput on a two-core machine (docs/decisions.md). SQLModel still
defines the schema (db/tables.py) that Alembic migrates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeAlias, TypeVar, cast

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from app.errors import RetryTransaction, ServiceUnavailable
from app.metrics import REGISTRY
from app.models import DomainEvent
from db.type_cache import SharedTypesConnection, prime

T = TypeVar("T")
P = ParamSpec("P")
log = logging.getLogger("conversation_service.db")

if TYPE_CHECKING:
    #: What repositories accept: a bare connection or one borrowed from the pool.
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection

AfterCommit = Callable[[], Awaitable[None]]


def asyncpg_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs (postgresql+asyncpg://) as well as plain ones."""
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgres+asyncpg://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def sqlalchemy_url(url: str) -> str:
    plain = asyncpg_dsn(url)
    for prefix in ("postgresql://", "postgres://"):
        if plain.startswith(prefix):
            return "postgresql+asyncpg://" + plain[len(prefix) :]
    return plain


#: "Postgres cannot be reached, or refuses connections, right now": not a bug, not the request's
#: fault; the API answers SERVICE_UNAVAILABLE (app/api/errors.py) and the client may retry.
#: (Python 3.11: TimeoutError, ConnectionRefusedError and ConnectionResetError are OSErrors.)
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,  # class 08, and a connection lost mid-statement
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
)


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says Postgres is unreachable rather than the work is wrong."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(current, UNREACHABLE_ERRORS):
            return True
        if isinstance(current, asyncpg.InterfaceError) and (
            "connection is closed" in str(current) or "pool is closed" in str(current)
        ):
            return True
        current = current.__cause__
        seen += 1
    return False


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class StatementCounter:
    """Counts statements sent to Postgres by this process (exported as a metric; lets tests
    prove that nested GraphQL fields are batched rather than queried per row)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, record: Any) -> None:
        self.count += 1


STATEMENTS = StatementCounter()


class _StatementCollector:
    """Exposes STATEMENTS on the process' metrics registry without a lock on the hot path."""

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("db_statements", "SQL statements sent to Postgres.")
        family.add_metric([], STATEMENTS.count)
        return [family]


REGISTRY.register(_StatementCollector())


#: Set when a connection of this process finds the citus extension: a few statements take the
#: form Citus can hand whole to one worker (db/repositories/messages.py, the append).
_CITUS = [False]


def on_citus() -> bool:
    return _CITUS[0]


_HAS_CITUS = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"


async def has_citus(conn: Connection) -> bool:
    """Whether this database has the citus extension (asked now, not the process-wide flag)."""
    return bool(await conn.fetchval(_HAS_CITUS))


async def _init_connection(conn: Connection) -> None:
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(typename, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")
    if not _CITUS[0] and await has_citus(conn):
        _CITUS[0] = True
    conn.add_query_logger(STATEMENTS)  # after: the statements counted are the service's own


class LeanPool:
    """A minimal pool of asyncpg connections: a LIFO of idle ones, new ones made up to max_size.

    asyncpg's own pool costs ~12 µs of CPU per acquire/release (a task per release for its
    shield, an inactivity timer, a proxy object); on a request or an append that is 10 % of the
    client's work. This one costs well under 1 µs. What it must still guarantee: a broken
    connection is dropped, no transaction survives a release, and a cancelled waiter never
    swallows a connection.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        min_size: int,
        max_size: int,
        acquire_timeout_s: float | None = None,
    ) -> None:
        self._connect = connect
        self._min_size = min_size
        self._max_size = max(max_size, 1)
        #: How long a caller waits for a busy pool before SERVICE_UNAVAILABLE: without a bound,
        #: a Postgres that hangs (rather than refuses) queues every request behind it forever.
        self._acquire_timeout_s = acquire_timeout_s
        self._idle: list[asyncpg.Connection] = []
        self._size = 0
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False

    async def start(self) -> None:
        for _ in range(self._min_size):
            self._size += 1
            try:
                self._idle.append(await self._connect())
            except BaseException:
                self._size -= 1
                raise

    def acquire(self) -> _Acquire:
        return _Acquire(self)

    async def _get(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the pool is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._size -= 1
            if self._size < self._max_size:
                self._size += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._size -= 1
                    self._wake()
                    raise
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self._acquire_timeout_s):
                    try:
                        handed = await waiter
                    except asyncio.CancelledError:
                        if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                            self._put(cast(asyncpg.Connection, waiter.result()))
                        raise
            except TimeoutError:
                raise ServiceUnavailable(
                    f"no database connection came free within {self._acquire_timeout_s:g} s "
                    f"(all {self._max_size} of this process' connections are busy); retry later"
                ) from None
            if handed is not None:
                return handed
            # None: a slot was freed (a broken connection dropped): loop and make one.

    async def release(self, conn: asyncpg.Connection) -> None:
        if not conn.is_closed() and conn.is_in_transaction():
            try:
                await conn.execute("ROLLBACK")
            except Exception:
                conn.terminate()
        if conn.is_closed() or self._closed:
            if not conn.is_closed():
                await conn.close()
            self._size -= 1
            self._wake()
            return
        self._put(conn)

    def _put(self, conn: asyncpg.Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def get_size(self) -> int:
        return self._size

    def get_idle_size(self) -> int:
        return len(self._idle)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._size -= 1
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the pool is closed"))


class _Acquire:
    """`async with pool.acquire() as conn` or `conn = await pool.acquire()` (then release)."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: LeanPool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    def __await__(self) -> Generator[Any, None, asyncpg.Connection]:
        return self._pool._get().__await__()

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._pool._get()
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)


async def create_pool(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    statement_timeout_ms: int = 15_000,
    statement_cache_size: int = 256,
    connect_timeout_s: float = 60.0,
    acquire_timeout_s: float | None = None,
) -> LeanPool:
    dsn = asyncpg_dsn(url)

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(
            dsn,
            connection_class=SharedTypesConnection,
            statement_cache_size=statement_cache_size,
            timeout=connect_timeout_s,
            server_settings={
                "statement_timeout": str(statement_timeout_ms),
                "application_name": "conversation-service",
                # UTC everywhere: DateTime outputs are UTC and daily stats bucket by UTC day.
                "TimeZone": "UTC",
            },
        )
        try:
            await _init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    pool = LeanPool(connect, min_size, max_size, acquire_timeout_s)
    await pool.start()
    async with pool.acquire() as conn:
        await prime(conn)  # off the request path: no request waits for asyncpg's type query
    return pool


class UnitOfWork:
    """One connection, at most one transaction, and the hooks to run after commit.

    Reads and single-statement writes (a statement is atomic on its own in
    Postgres) run without BEGIN/COMMIT: two round trips fewer on the hottest
    write. A service that writes with more than one statement calls `begin()`
    first; the unit of work, never the service, commits.
    """

    __slots__ = ("_after_commit", "_tx", "conn", "events")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._tx: Any = None
        self._after_commit: list[AfterCommit] = []
        self.events: list[DomainEvent] = []

    def emit(self, event: DomainEvent) -> None:
        """Record what changed; listeners hear it only if the work commits."""
        self.events.append(event)

    async def begin(self) -> Connection:
        if self._tx is None:
            self._tx = self.conn.transaction()
            await self._tx.start()
        return self.conn

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    def after_commit(self, hook: AfterCommit) -> None:
        """Run `hook` once the work is durable (cache write-through, events, jobs)."""
        self._after_commit.append(hook)

    async def _finish(self, ok: bool) -> list[AfterCommit]:
        tx, self._tx = self._tx, None
        if tx is not None:
            if ok:
                await tx.commit()
            else:
                await tx.rollback()
        hooks, self._after_commit = self._after_commit, []
        if not ok:
            self.events.clear()
        return hooks if ok else []


@asynccontextmanager
async def custom_plans(conn: Connection) -> AsyncIterator[Connection]:
    """Reads whose statements are planned for their parameter values on every execution.

    asyncpg prepares every statement, and from the sixth execution on one connection Postgres
    may reuse a generic plan, estimated without the values, when that looks no dearer than the
    custom plans so far. For a full-text statement the values are the plan: the generic estimate
    (a default 0.5 % match share, `LIMIT $n` taken as a tenth of the rows) chose a sequential scan
    running to_tsvector on every message, 5 ms became 170 ms (docs/benchmarks.md, shapes bench).
    Planning such a statement each time costs a fraction of a millisecond.

    Outside a transaction the reads get their own READ ONLY one, so the setting (SET LOCAL) ends
    with it whatever happens, and a connection the pool takes back after a failure is rolled
    back; inside the caller's transaction the setting lasts until that one ends.

    Not on Citus: there the coordinator fills the parameters in before it routes a statement
    (`ExecuteCoordinatorEvaluableExpressions`, citus_custom_scan.c), so the worker plans a shard
    query with the words as constants every time, and a transaction block around a search would
    cost a two-phase commit (the tenants reference table read locally, the shard remotely)."""
    if on_citus():
        yield conn
        return
    if conn.is_in_transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield conn
        return
    await conn.execute("BEGIN READ ONLY; SET LOCAL plan_cache_mode = force_custom_plan")
    try:
        yield conn
    except BaseException:
        try:
            await conn.execute("ROLLBACK")
        except BaseException:
            conn.terminate()  # e.g. cancelled mid-statement: the pool drops a closed connection
        raise
    await conn.execute("COMMIT")


def planned_per_call(
    fn: Callable[Concatenate[Connection, P], Awaitable[T]],
) -> Callable[Concatenate[Connection, P], Awaitable[T]]:
    """`fn`'s statements run inside `custom_plans` (planned for their values on every call)."""

    @functools.wraps(fn)
    async def planned(conn: Connection, /, *args: P.args, **kwargs: P.kwargs) -> T:
        async with custom_plans(conn):
            return await fn(conn, *args, **kwargs)

    return planned


EventListener = Callable[[list[DomainEvent]], Awaitable[None]]


class Database:
    """The pool plus the one way edges run work against it."""

    def __init__(self, pool: LeanPool, *, max_attempts: int = 5) -> None:
        self.pool = pool
        self.max_attempts = max_attempts
        self.listeners: list[EventListener] = []

    def listen(self, listener: EventListener) -> None:
        """Hear the events of every committed unit of work (cache write-through, live fan-out).
        A listener's failure is logged, never raised: the write it follows is already durable."""
        self.listeners.append(listener)

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run `work` in a unit of work, commit, then run its after-commit hooks.

        A `RetryTransaction` (a concurrent writer won a race the statement could
        not see) rolls back and runs the work again; a retry sees the winner.
        """
        attempt = 0
        while True:
            attempt += 1
            async with self.pool.acquire() as conn:
                uow = UnitOfWork(conn)
                try:
                    result = await work(uow)
                except RetryTransaction:
                    await uow._finish(ok=False)
                    if attempt >= self.max_attempts:
                        raise
                    continue
                except BaseException:
                    await uow._finish(ok=False)
                    raise
                hooks = await uow._finish(ok=True)
            if uow.events:
                for listener in self.listeners:
                    try:
                        await listener(uow.events)
                    except Exception:
                        log.exception("event listener %r failed after commit", listener)
            for hook in hooks:
                await hook()
            return result

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    async def close(self) -> None:
        await self.pool.close()
