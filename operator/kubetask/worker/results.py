"""What a handler may return, and the errors the worker itself raises about an attempt.

A result is stored as JSON in PostgreSQL and mirrored (capped) into the Task
status, so it must be JSON, hold no NUL character, and fit
``KUBETASK_MAX_RESULT_BYTES``; a result that does not is a permanent error
(the same code returns the same kind of value), named so the fix is plain.
"""

from __future__ import annotations

import json
from typing import Any

from kubetask import handlers, model


class ResultError(handlers.PermanentError):
    """The handler's result cannot be stored. Permanent: the same code returns the same kind of value."""


class ResultNotSerializable(ResultError):
    pass


class ResultTooLarge(ResultError):
    pass


class AttemptTimeout(Exception):
    """The attempt ran past the Task's timeoutSeconds."""


OWN_ERRORS = (ResultError, AttemptTimeout, handlers.UnknownHandler)
"""Errors raised by the worker itself: their traceback would show our code, not the user's."""


def encode_result(value: Any, max_bytes: int) -> Any:
    """Check that a handler's result can be stored: JSON, no NUL character, at most ``max_bytes``."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ResultNotSerializable(
            f"the handler returned a value that is not JSON ({error}); return dicts, lists, "
            "strings, finite numbers, booleans or None"
        ) from None
    path = model.find_nul(value, "result")
    if path is not None:
        raise ResultNotSerializable(
            f"{path} contains a NUL character (U+0000), which PostgreSQL cannot store; "
            "encode binary data (for example as base64)"
        )
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise ResultTooLarge(
            f"the result is {size} bytes of JSON, more than KUBETASK_MAX_RESULT_BYTES={max_bytes}; "
            "store large results elsewhere (object storage) and return a reference"
        )
    return value
