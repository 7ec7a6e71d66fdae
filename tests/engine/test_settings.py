"""Settings read from the environment, with errors that name the variable."""

import socket

import pytest

from kubetask import settings


def test_defaults_and_pod_name_fallback() -> None:
    worker = settings.WorkerSettings.from_env({})
    assert (worker.queue, worker.concurrency, worker.handler_modules) == ("default", 4, [])
    assert worker.pod_name == socket.gethostname()
    assert worker.heartbeat_interval_seconds < worker.lease_seconds


def test_environment_variables() -> None:
    worker = settings.WorkerSettings.from_env({
        "KUBETASK_QUEUE": "emails", "KUBETASK_CONCURRENCY": "8", "KUBETASK_LEASE_SECONDS": "12.5",
        "KUBETASK_HEARTBEAT_INTERVAL_SECONDS": "4", "KUBETASK_HANDLERS": " a.b , c ,", "POD_NAME": "w-1",
        "KUBETASK_SHUTDOWN_TIMEOUT_SECONDS": "0", "KUBETASK_MAX_RESULT_BYTES": "100",
    })
    assert (worker.queue, worker.concurrency, worker.lease_seconds, worker.handler_modules, worker.pod_name) == (
        "emails", 8, 12.5, ["a.b", "c"], "w-1")
    database = settings.DatabaseSettings.from_env({"DATABASE_URL": "postgresql://x@y/z"})
    assert database.url == "postgresql://x@y/z"


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(settings.SettingsError, match="KUBETASK_CONCURRENCY='zero'"):
        settings.WorkerSettings.from_env({"KUBETASK_CONCURRENCY": "zero"})
    with pytest.raises(settings.SettingsError, match="DATABASE_URL"):
        settings.DatabaseSettings.from_env({})
    with pytest.raises(settings.SettingsError, match="must be shorter than lease_seconds"):
        settings.WorkerSettings.from_env({"KUBETASK_LEASE_SECONDS": "5"})


def test_every_field_is_documented() -> None:
    for model in (settings.DatabaseSettings, settings.WorkerSettings):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"


@pytest.mark.parametrize("url", ["not a url s3cret", "postgresql://u:s3cret@h:5432/d?sslmode=bogus x"])
def test_bad_database_url_names_the_variable_and_hides_its_value(url: str) -> None:
    with pytest.raises(settings.SettingsError) as err:
        settings.DatabaseSettings.from_env({"DATABASE_URL": url})
    message = str(err.value)
    assert "DATABASE_URL=<hidden>" in message and "postgresql://USER:PASSWORD@HOST:5432/DATABASE" in message
    assert "s3cret" not in message


def test_missing_database_url_says_it_is_unset() -> None:
    with pytest.raises(settings.SettingsError, match="DATABASE_URL=<unset>"):
        settings.OperatorSettings.from_env({})


@pytest.mark.parametrize("model", [settings.WorkerSettings, settings.OperatorSettings])
def test_metrics_listen_on_loopback_unless_an_address_is_given(model: type[settings._EnvSettings]) -> None:
    """The endpoint has no authentication: a process started by hand does not show it to the network."""
    env = {"DATABASE_URL": "postgresql://x@y/z"}
    assert str(model.from_env(env).metrics_address) == "127.0.0.1"  # type: ignore[attr-defined]
    assert str(model.from_env({**env, "KUBETASK_METRICS_ADDRESS": "0.0.0.0"}).metrics_address) == "0.0.0.0"  # type: ignore[attr-defined]
    with pytest.raises(settings.SettingsError, match="KUBETASK_METRICS_ADDRESS='everywhere'"):
        model.from_env({**env, "KUBETASK_METRICS_ADDRESS": "everywhere"})
