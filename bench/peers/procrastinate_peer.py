"""procrastinate: ``App.run_worker_async`` over its psycopg connector, async tasks.

Settings: ``concurrency`` as given (its default is 1; its documentation
recommends raising it for async tasks, which these are), LISTEN/NOTIFY on
(its default), ``delete_jobs="never"`` (its default: finished jobs stay, as
kubetask keeps its history), other options at their defaults.
"""

from __future__ import annotations

from typing import Any

from bench import common

NAME = "procrastinate"
SETTINGS = "procrastinate run_worker_async(concurrency={concurrency}, defaults otherwise), psycopg pool"


def version() -> str:
    return common.package_version("procrastinate")


def _app(dsn: str) -> Any:
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))


class Client:
    def __init__(self, app: Any) -> None:
        self.app = app

        @app.task(name="noop")
        async def noop() -> None:
            pass

        @app.task(name="stamp")
        async def stamp(ident: int) -> None:
            pass

        self.noop, self.stamp = noop, stamp

    @classmethod
    async def open(cls, dsn: str) -> Client:
        client = cls(_app(dsn))
        await client.app.open_async()
        return client

    async def close(self) -> None:
        await self.app.close_async()

    async def install(self) -> None:
        await self.app.schema_manager.apply_schema_async()

    async def enqueue_backlog(self, n: int, start: int = 0) -> None:
        # batch_defer_async: one statement for the whole backlog.
        await self.noop.batch_defer_async(*({} for _ in range(n)))

    async def produce(self, n: int, start: int) -> None:
        await self.noop.batch_defer_async(*({} for _ in range(n)))

    async def enqueue_stamp(self, ident: int) -> None:
        await self.stamp.defer_async(ident=ident)

    async def _value(self, sql: str) -> Any:
        return (await self.app.connector.execute_query_one_async(sql))["v"]

    async def unfinished(self) -> bool:
        return bool(await self._value(
            "SELECT EXISTS (SELECT FROM procrastinate_jobs WHERE status IN ('todo', 'doing')) AS v"))

    async def succeeded(self) -> int:
        return int(await self._value("SELECT count(*) AS v FROM procrastinate_jobs WHERE status = 'succeeded'"))


def preload() -> None:
    import procrastinate  # noqa: F401


async def serve(dsn: str, concurrency: int, probe: Any) -> None:
    app = _app(dsn)

    @app.task(name="noop")
    async def noop() -> None:
        probe.hit()

    @app.task(name="stamp")
    async def stamp(ident: int) -> None:
        probe.stamp(ident)

    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)
