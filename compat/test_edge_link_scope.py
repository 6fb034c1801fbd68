"""The hub's side of an edge device's upstream link (`/edge/{device}/...`) acts only for identities that exist in
the edge device's scope, and an edge device declares a bounded number of clients (issue 9, item 9)."""

from __future__ import annotations

import base64

import pytest
import requests

from harness import API_VERSION, device_sas

pytestmark = pytest.mark.docker_free  # the outpost binary and raw HTTPS only: no Docker

# `outpost_core::edge_link::LINK_API_VERSION`: every call of the link names it.
LINK_VERSION = {"link-version": "2026-12-01"}


def message(client: str, body: bytes) -> dict:
    return {"client": client, "message": {"bodyBase64": base64.b64encode(body).decode(), "system": {},
                                          "properties": {}}}


def edge_call(hub, edge_key: str, method: str, path: str, body: dict) -> requests.Response:
    return requests.request(
        method, f"{hub.base_url}/edge/edge1/{path}", params={"api-version": API_VERSION, **LINK_VERSION},
        json=body,
        headers={"Authorization": device_sas(hub.host, "edge1", edge_key)}, verify=str(hub.ca_path), timeout=30)


@pytest.fixture
def edge_key(hub, registry) -> str:
    hub.run_cli(["device", "create", "edge1", "--edge"])
    registry.create_module_with_sas("edge1", "filter", None, "", "")
    registry.create_device_with_sas("stranger", "", "", "enabled")
    registry.create_module_with_sas("stranger", "m", None, "", "")
    return registry.get_device("edge1").authentication.symmetric_key.primary_key


def events(hub) -> list[dict]:
    got = hub.rest_session().get(f"{hub.base_url}/events", params={"api-version": API_VERSION, "after": 0})
    assert got.status_code == 200, got.text
    return got.json()["events"]


def test_telemetry_for_a_module_that_does_not_exist_under_the_edge_device_is_refused(hub, edge_key):
    for foreign in ["edge1/ghost", "stranger/m", "stranger"]:
        refused = edge_call(hub, edge_key, "POST", "messages", {"messages": [message(foreign, b"forged")]})
        assert refused.status_code == 401, (foreign, refused.status_code, refused.text)
        assert "IotHubUnauthorizedAccess" in refused.text
    # One such message refuses the batch whole.
    mixed = edge_call(hub, edge_key, "POST", "messages",
                      {"messages": [message("edge1/filter", b"real"), message("edge1/ghost", b"forged")]})
    assert mixed.status_code == 401, mixed.text
    assert events(hub) == []

    accepted = edge_call(hub, edge_key, "POST", "messages", {"messages": [message("edge1/filter", b"21.5")]})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"accepted": 1}
    [event] = events(hub)
    assert (event["deviceId"], event["moduleId"], event["body"]) == ("edge1", "filter", "21.5")


def test_twin_calls_for_a_module_that_does_not_exist_are_refused(hub, edge_key):
    auth = {"Authorization": device_sas(hub.host, "edge1", edge_key)}
    url = f"{hub.base_url}/edge/edge1/twin"
    for client, status in [("edge1/ghost", 401), ("edge1/filter", 200)]:
        got = requests.get(url, params={"api-version": API_VERSION, "client": client, **LINK_VERSION}, headers=auth,
                           verify=str(hub.ca_path), timeout=30)
        assert got.status_code == status, (client, got.text)


def test_presence_is_capped_and_limited_to_the_scope(hub, edge_key):
    made_up = [{"id": f"edge1/made-up-{i}", "features": ["methods"]} for i in range(10_000)]
    over = edge_call(hub, edge_key, "POST", "presence", {"clients": made_up})
    assert over.status_code == 400, over.text
    assert "ArgumentInvalid" in over.text
    ghost = edge_call(hub, edge_key, "POST", "presence", {"clients": [{"id": "edge1/ghost", "features": []}]})
    assert ghost.status_code == 401, ghost.text
    real = edge_call(hub, edge_key, "POST", "presence", {"clients": [{"id": "edge1/filter", "features": ["methods"]}]})
    assert real.status_code == 200, real.text
