"""Handlers: the registry, discovery, and the demo handlers (kubetask.demo)."""

import asyncio
import sys
import textwrap
import uuid

import pytest

from kubetask import demo, handlers


def ctx(attempt: int = 1, uid: str = "5f0e6e8c-0000-4000-8000-000000000001") -> handlers.Context:
    return handlers.Context(uid=uid, namespace="ns", name="t", type="x", queue="default",
                            attempt=attempt, attempt_in_budget=attempt, max_retries=3)


def test_unknown_handler_is_permanent_and_lists_known_ones() -> None:
    registry = handlers.Registry()
    registry.register("b")(demo.echo)
    registry.register("a")(demo.echo)
    with pytest.raises(handlers.PermanentError) as raised:
        registry.get("nope")
    assert isinstance(raised.value, handlers.UnknownHandler)
    assert "'nope'" in str(raised.value) and "known handlers: a, b" in str(raised.value)
    assert "KUBETASK_HANDLERS" in str(raised.value)


def test_a_name_cannot_be_taken_twice() -> None:
    registry = handlers.Registry()
    registry.register("x")(demo.echo)
    registry.register("x")(demo.echo)  # the same function again is harmless
    with pytest.raises(handlers.DuplicateHandler, match="'x' is registered twice"):
        registry.register("x")(demo.report)


def test_the_demo_module_registers_the_demos() -> None:
    registry = handlers.load(["kubetask.demo"], entry_points=False)
    assert {"echo", "sleep", "fail", "email", "image", "report"} <= set(registry.names())


def test_missing_handler_module_names_the_module_and_the_variable() -> None:
    with pytest.raises(handlers.HandlerModuleError) as raised:
        handlers.load(["no_such_module_for_kubetask"], entry_points=False)
    assert "no_such_module_for_kubetask" in str(raised.value) and "KUBETASK_HANDLERS" in str(raised.value)


def test_modules_and_entry_points_register_handlers(tmp_path, monkeypatch) -> None:
    suffix = uuid.uuid4().hex[:8]
    module, plugin = f"user_tasks_{suffix}", f"plugin_tasks_{suffix}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f"""
        from kubetask import handlers

        @handlers.register("from-module-{suffix}")
        def run(payload, ctx):
            return "module"
    """))
    (tmp_path / f"{plugin}.py").write_text("def run(payload, ctx):\n    return 'entry point'\n")
    dist = tmp_path / f"plugin_{suffix}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: plugin-{suffix}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[kubetask.handlers]\nfrom-plugin-{suffix} = {plugin}:run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = handlers.load([module])
        assert registry.get(f"from-module-{suffix}")({}, ctx()) == "module"
        assert registry.get(f"from-plugin-{suffix}")({}, ctx()) == "entry point"
    finally:
        sys.modules.pop(module, None)
        sys.modules.pop(plugin, None)


def test_fail_fails_the_first_times_then_succeeds() -> None:
    with pytest.raises(RuntimeError, match="flaky"):
        demo.fail({"times": 2, "message": "flaky"}, ctx(attempt=2))
    assert demo.fail({"times": 2}, ctx(attempt=3)) == {"succeeded_on_attempt": 3}
    with pytest.raises(RuntimeError):
        demo.fail({}, ctx(attempt=99))
    with pytest.raises(handlers.PermanentError, match="nope"):
        demo.fail({"permanent": True, "message": "nope"}, ctx())


async def test_email_returns_a_message_id_stable_across_retries() -> None:
    payload = {"to": "a@example.com", "subject": "Hi", "delay_seconds": 0}
    first = await demo.email(payload, ctx(attempt=1))
    again = await demo.email(payload, ctx(attempt=2))
    assert first == again and first["to"] == ["a@example.com"] and first["message_id"].startswith("<")
    with pytest.raises(handlers.PermanentError, match="payload.to"):
        await demo.email({"to": "nobody", "subject": "x"}, ctx())


def test_image_simulates_a_resize() -> None:
    result = demo.image({"url": "https://x.test/cat.jpg?v=1", "width": 64, "height": 32, "delay_seconds": 0}, ctx())
    assert result == {"source": "https://x.test/cat.jpg?v=1", "output": "https://x.test/cat_64x32.jpg",
                      "width": 64, "height": 32, "bytes": 614}
    with pytest.raises(handlers.PermanentError, match="payload.width"):
        demo.image({"url": "u", "width": 0, "height": 1}, ctx())


def test_report_summarises_rows() -> None:
    assert demo.report({"rows": [1, {"value": 2}, 3.5], "kind": "sales"}, ctx()) == {
        "kind": "sales", "count": 3, "sum": 6.5, "min": 1.0, "max": 3.5, "mean": 6.5 / 3}
    assert demo.report({}, ctx()) == {"kind": "summary", "count": 0}
    with pytest.raises(handlers.PermanentError, match=r"payload.rows\[0\]"):
        demo.report({"rows": ["x"]}, ctx())


async def test_sleep_sleeps() -> None:
    async with asyncio.timeout(2):
        assert await demo.sleep({"seconds": 0.01}, ctx()) == {"slept": 0.01}
