"""The operator's API writes reuse the bearer token instead of re-running the kubeconfig refresh per request."""

from __future__ import annotations

import kubernetes

from kubetask import kube


def test_the_token_is_asked_for_once_a_minute_and_again_after_a_refusal() -> None:
    asked: list[int] = []
    config = kubernetes.client.Configuration()
    config.api_key = {"authorization": "token-1"}
    config.api_key_prefix = {"authorization": "Bearer"}

    def refresh(configuration: kubernetes.client.Configuration) -> None:
        asked.append(1)
        configuration.api_key = {"authorization": f"token-{len(asked)}"}

    config.refresh_api_key_hook = refresh
    now = [1000.0]
    http = kube._AsyncHttp(config, limit=4, clock=lambda: now[0])

    assert http.token() == "Bearer token-1" and len(asked) == 1
    now[0] += 59
    assert http.token() == "Bearer token-1" and len(asked) == 1, "asked again within the minute"
    now[0] += 1
    assert http.token() == "Bearer token-2" and len(asked) == 2, "a rotated token was not picked up"
    http.forget_token()  # what a 401 does
    assert http.token() == "Bearer token-3" and len(asked) == 3
