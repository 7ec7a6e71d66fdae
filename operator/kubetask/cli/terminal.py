"""What the CLI prints (tables, JSON, YAML, ages) and how it exits."""

from __future__ import annotations

import datetime
import json
from typing import Any, Callable, Sequence

import yaml

from kubetask import logs

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_FORBIDDEN = 0, 1, 2, 3, 4, 5


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def age(timestamp: str | datetime.datetime | None) -> str:
    if not timestamp:
        return ""
    when = (timestamp if isinstance(timestamp, datetime.datetime)
            else datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")))
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= 60):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else logs.printable(str(v)) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def emit(obj: Any, output: str | None, render_table: Callable[[], str]) -> None:
    if output == "json":
        print(json.dumps(obj, indent=2, default=str))
    elif output == "yaml":
        print(yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False), end="")
    else:
        print(render_table())


def task_rows(items: list[dict[str, Any]], wide: bool, all_namespaces: bool) -> str:
    headers = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "TYPE", "PHASE", "ATTEMPTS", "WORKER", "AGE"]
    if wide:
        headers += ["QUEUE", "PRIORITY", "NEXT", "LAST ERROR"]
    rows = []
    for item in items:
        meta, spec, status = item["metadata"], item.get("spec", {}), item.get("status") or {}
        row = ([meta["namespace"]] if all_namespaces else []) + [
            meta["name"], spec.get("type"), status.get("phase", "Pending"), status.get("attempts", 0),
            status.get("worker", ""), age(meta.get("creationTimestamp"))]
        if wide:
            error = status.get("lastError") or {}
            row += [spec.get("queue", "default"), spec.get("priority", 0), status.get("nextAttemptAt", ""),
                    f"{error.get('type')}: {error.get('message', '')[:60]}" if error else ""]
        rows.append(row)
    return table(headers, rows)


def plain(row: Any) -> dict[str, Any]:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(row).items()}
