"""The log formatters: what a JSON line and a text line hold, for kubetask's, kopf's and a handler's records."""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import json
import logging
import sys
from typing import Any

import pytest

from kubetask import logs, settings


@dataclasses.dataclass(frozen=True)
class Claimed:
    namespace: str = "shop"
    name: str = "resize-7"
    uid: str = "3cef08e6-d9e1-44ec-93f4-6416c9ad9812"
    attempt: int = 2
    queue: str = "images"
    type: str = "resize"


def record(message: str = "hello %s", *args: Any, level: int = logging.INFO, name: str = "myapp.tasks",
           exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(name, level, __file__, 1, message,
                                         args or (("world",) if "%s" in message else ()), exc_info)
    made.created = datetime.datetime(2026, 11, 22, 14, 4, 8, 412305, tzinfo=datetime.UTC).timestamp()
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def as_json(made: logging.LogRecord, task: Claimed | None = None) -> dict[str, Any]:
    def run() -> str:
        if task is not None:
            logs.TASK.set(task)
        return logs.JsonFormatter().format(made)

    line = contextvars.copy_context().run(run)
    assert "\n" not in line, "one record, one line"
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_a_json_line_has_an_rfc3339_utc_time_level_logger_and_message() -> None:
    assert as_json(record()) == {"ts": "2026-11-22T14:04:08.412Z", "level": "info", "logger": "myapp.tasks",
                                 "message": "hello world"}


def test_inside_an_attempt_every_line_carries_the_task_even_a_handlers_own() -> None:
    line = as_json(record(level=logging.WARNING), task=Claimed())
    assert line["level"] == "warning"
    assert line["task"] == {"namespace": "shop", "name": "resize-7", "uid": "3cef08e6-d9e1-44ec-93f4-6416c9ad9812",
                            "attempt": 2, "queue": "images", "type": "resize"}
    assert "task" not in as_json(record()), "outside an attempt the context is empty"


def test_an_operator_line_about_a_task_carries_it_through_extra() -> None:
    made = record(**logs.about("shop", "resize-7", "uid-1"))
    assert as_json(made)["task"] == {"namespace": "shop", "name": "resize-7", "uid": "uid-1"}
    assert as_json(record(**logs.about("shop", "resize-7")))["task"] == {"namespace": "shop", "name": "resize-7"}


def test_kopfs_object_references_become_task_or_object() -> None:
    task_ref = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "name": "a", "uid": "u", "namespace": "n"}
    assert as_json(record(name="kopf.objects", k8s_ref=task_ref))["task"] == {"namespace": "n", "name": "a", "uid": "u"}
    pool_ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w", "uid": "d", "namespace": "kubetask-system"}
    assert as_json(record(name="kopf.objects", k8s_ref=pool_ref))["object"] == {
        "kind": "Deployment", "namespace": "kubetask-system", "name": "w", "uid": "d"}


def test_an_exception_is_one_string_field() -> None:
    try:
        raise RuntimeError("the backend is having a bad day")
    except RuntimeError:
        line = as_json(record("failed", exc_info=sys.exc_info()))
    assert line["message"] == "failed"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].rstrip().endswith("RuntimeError: the backend is having a bad day")


def test_arguments_json_cannot_encode_do_not_lose_the_line() -> None:
    line = as_json(record("%s", object(), extra_field=object()))
    assert line["message"].startswith("<object object at ")


def test_a_text_line_is_for_people() -> None:
    made = record(level=logging.WARNING)
    line = contextvars.copy_context().run(lambda: (logs.TASK.set(Claimed()), logs.TextFormatter().format(made))[1])
    assert line == "2026-11-22T14:04:08.412Z WARNING myapp.tasks: hello world  [shop/resize-7 #2]"
    assert logs.TextFormatter().format(record()) == "2026-11-22T14:04:08.412Z INFO    myapp.tasks: hello world"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json, text"):
        logs.formatter("xml")


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, (None, "info")),
    ({"KUBETASK_LOG_FORMAT": "JSON", "KUBETASK_LOG_LEVEL": "Debug"}, ("json", "debug")),
    ({"KUBETASK_LOG_FORMAT": "text"}, ("text", "info")),
])
def test_log_settings(environ: dict[str, str], expected: tuple[str | None, str]) -> None:
    chosen = settings.LogSettings.from_env(environ)
    assert (chosen.format, chosen.level) == expected


def test_a_bad_log_format_names_the_variable() -> None:
    with pytest.raises(settings.SettingsError, match="KUBETASK_LOG_FORMAT='xml'"):
        settings.LogSettings.from_env({"KUBETASK_LOG_FORMAT": "xml"})


def test_a_line_about_an_attempt_logged_outside_it_names_the_attempt() -> None:
    assert as_json(record(**logs.attempt(Claimed())))["task"]["attempt"] == 2


def test_tenant_text_cannot_forge_a_text_log_line_or_restyle_the_terminal() -> None:
    """A Task named or failing with escape sequences and newlines (issue 20): escaped, one record one line."""
    record = logging.LogRecord("kubetask.worker", logging.WARNING, __file__, 1,
                               "task failed: %s", ("boom\n2026-01-01T00:00:00Z INFO forged\x1b[2J\u202e",), None)
    line = logs.TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.endswith("boom\\n2026-01-01T00:00:00Z INFO forged\\x1b[2J\\u202e")


def test_the_cli_table_escapes_what_a_tenant_wrote() -> None:
    from kubetask.cli import terminal

    rendered = terminal.table(["NAME", "LAST ERROR"], [["t", "E: \x1b]0;owned\x07 line\nnext"]])
    assert len(rendered.splitlines()) == 2 and "\x1b" not in rendered and "\x07" not in rendered
