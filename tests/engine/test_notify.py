"""NOTIFY: sent in the same transaction as the change, so listeners hear of it only after commit."""

import datetime

import psycopg

from kubetask import db


async def listener(connect, *channels: str) -> tuple[db.connection.Conn, list[psycopg.Notify]]:
    conn = await connect()
    heard: list[psycopg.Notify] = []
    conn.add_notify_handler(heard.append)
    if db.connection.QUEUE_CHANNEL in channels:
        await db.connection.listen(conn, db.connection.QUEUE_CHANNEL)
    if db.connection.STATUS_CHANNEL in channels:
        await db.connection.listen(conn, db.connection.STATUS_CHANNEL)
    return conn, heard


async def next_notifications(wait_until, conn: db.connection.Conn, heard: list[psycopg.Notify], count: int) -> list[tuple[str, str]]:
    """Wait (bounded) until ``count`` notifications have arrived; each round trip reads what came in."""

    async def arrived() -> bool:
        await conn.execute("SELECT 1")
        return len(heard) >= count

    await wait_until(arrived, timeout=5.0, what=f"{count} notifications")
    return sorted((n.channel, n.payload) for n in heard)


async def test_queue_notification_is_delivered_only_after_commit(connect, new_task, wait_until) -> None:
    writer = await connect()
    listen_conn, heard = await listener(connect, db.connection.QUEUE_CHANNEL)
    async with writer.transaction():
        await db.queue.admit(writer, [new_task(queue="emails"), new_task(queue="emails"), new_task(queue="images")])
        # A round trip on the listener: PostgreSQL has sent nothing, the rows are not visible yet.
        await listen_conn.execute("SELECT 1")
        assert heard == []
    assert await next_notifications(wait_until, listen_conn, heard, 2) == [
        ("kubetask_queue", "emails"), ("kubetask_queue", "images")]


async def test_rolled_back_admission_notifies_nobody(connect, new_task, wait_until) -> None:
    writer = await connect()
    listen_conn, heard = await listener(connect, db.connection.QUEUE_CHANNEL, db.connection.STATUS_CHANNEL)
    try:
        async with writer.transaction():
            await db.queue.admit(writer, [new_task()])
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    await db.queue.admit(writer, [new_task(queue="marker")])
    assert await next_notifications(wait_until, listen_conn, heard, 2) == [
        ("kubetask_queue", "marker"), ("kubetask_status", "")]


async def test_future_tasks_do_not_wake_workers(connect, new_task, wait_until) -> None:
    writer = await connect()
    listen_conn, heard = await listener(connect, db.connection.QUEUE_CHANNEL)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    await db.queue.admit(writer, [new_task(queue="later", run_at=later)])
    await db.queue.admit(writer, [new_task(queue="now")])
    assert await next_notifications(wait_until, listen_conn, heard, 1) == [("kubetask_queue", "now")]


async def test_status_changes_notify_and_due_retries_wake_the_queue(connect, new_task, wait_until) -> None:
    writer = await connect()
    await db.queue.admit(writer, [new_task(queue="q")])
    listen_conn, heard = await listener(connect, db.connection.QUEUE_CHANNEL, db.connection.STATUS_CHANNEL)
    [claimed] = await db.queue.claim(writer, "q", "pod/x", "pod", 1, 30)
    assert await next_notifications(wait_until, listen_conn, heard, 1) == [("kubetask_status", "")]
    heard.clear()
    await db.queue.fail(writer, claimed.id, "pod/x", claimed.attempt, error_type="E", message="m", traceback=None,
                     retry_at=datetime.datetime.now(datetime.UTC))
    assert await next_notifications(wait_until, listen_conn, heard, 2) == [("kubetask_queue", "q"), ("kubetask_status", "")]


async def test_no_change_no_notification(connect, new_task, wait_until) -> None:
    writer = await connect()
    listen_conn, heard = await listener(connect, db.connection.QUEUE_CHANNEL, db.connection.STATUS_CHANNEL)
    assert await db.queue.claim(writer, "default", "pod/x", "pod", 5, 30) == []
    assert not await db.queue.cancel(writer, new_task().uid)
    await db.queue.admit(writer, [new_task(queue="marker")])
    # The marker's notifications arrive after anything the no-op calls could have sent.
    assert await next_notifications(wait_until, listen_conn, heard, 2) == [
        ("kubetask_queue", "marker"), ("kubetask_status", "")]
