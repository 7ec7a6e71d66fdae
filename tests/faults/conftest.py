"""Fault tests run on the same stack as the end-to-end tests (one operator, one database, per session)."""

from tests.e2e.conftest import e2e, stack  # noqa: F401  (fixtures shared with tests/e2e)
