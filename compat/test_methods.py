"""Direct methods: the service SDK invokes (REST), the device SDK answers (MQTT). AZURE-COMPAT §1.3, §4."""

from __future__ import annotations

import time

import pytest
from azure.iot.device import MethodResponse
from azure.iot.hub.models import CloudToDeviceMethod
from msrest.exceptions import HttpOperationError

from harness import set_handler

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    pytest.mark.hub_setups(),  # SQLite, PostgreSQL, three replicas behind HAProxy (conftest.py)
]


def answer_with(client, status: int = 200):
    """Installs a handler that answers every method with {"method", "payload"} echoed back."""
    seen = []

    def handler(request):
        seen.append(request)
        client.send_method_response(MethodResponse.create_from_method_request(
            request, status, {"method": request.name, "echo": request.payload}))

    set_handler(client, "on_method_request_received", handler)
    return seen


def test_device_method_round_trip(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    seen = answer_with(client)

    result = registry.invoke_device_method("dev1", CloudToDeviceMethod(
        method_name="reboot", payload={"delay": 3}, response_timeout_in_seconds=10))

    assert result.status == 200
    assert result.payload == {"method": "reboot", "echo": {"delay": 3}}
    assert len(seen) == 1 and seen[0].name == "reboot"


def test_device_method_status_and_null_payload_pass_through(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)

    def handler(request):
        client.send_method_response(MethodResponse.create_from_method_request(request, 404, None))

    set_handler(client, "on_method_request_received", handler)

    # payload None is sent as "" by the SDK (AZURE-COMPAT §4)
    result = registry.invoke_device_method("dev1", CloudToDeviceMethod(method_name="missing"))
    assert result.status == 404
    assert result.payload is None


def test_module_method_round_trip(hub, registry, clients):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    key = registry.create_module_with_sas("dev1", "mod1", None, "", "").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key, module_id="mod1")
    answer_with(client, status=201)

    result = registry.invoke_device_module_method("dev1", "mod1", CloudToDeviceMethod(
        method_name="ping", payload={"a": 1}, response_timeout_in_seconds=30))

    assert result.status == 201
    assert result.payload == {"method": "ping", "echo": {"a": 1}}


def test_method_for_a_module_does_not_reach_its_device(hub, registry, clients):
    dev_key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    registry.create_module_with_sas("dev1", "mod1", None, "", "")
    device = clients.open(hub, "dev1", dev_key)
    seen = answer_with(device)

    started = time.monotonic()
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_module_method("dev1", "mod1", CloudToDeviceMethod(
            method_name="ping", response_timeout_in_seconds=5))
    assert e.value.response.status_code == 404
    assert time.monotonic() - started < 4
    assert seen == []


def test_method_on_offline_device_fails_fast_with_404(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    started = time.monotonic()
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("dev1", CloudToDeviceMethod(
            method_name="ping", payload={}, response_timeout_in_seconds=30))
    assert e.value.response.status_code == 404
    assert time.monotonic() - started < 4, "connectTimeout 0: an offline device fails at once, not after 30 s"


def test_method_on_connected_device_without_method_subscription_is_404(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    clients.open(hub, "dev1", key)  # connected, but never subscribed to $iothub/methods/POST/#
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("dev1", CloudToDeviceMethod(method_name="ping", response_timeout_in_seconds=5))
    assert e.value.response.status_code == 404


def test_method_on_unknown_device_is_404(hub, registry):
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("nobody", CloudToDeviceMethod(method_name="ping"))
    assert e.value.response.status_code == 404


def test_method_that_is_never_answered_times_out_with_504(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    seen = []
    set_handler(client, "on_method_request_received", seen.append)  # receives, never answers

    started = time.monotonic()
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("dev1", CloudToDeviceMethod(method_name="slow", response_timeout_in_seconds=5))
    elapsed = time.monotonic() - started
    assert e.value.response.status_code == 504
    assert 4 <= elapsed < 15, f"the response timeout was 5 s, the call took {elapsed:.1f} s"
    assert len(seen) == 1


@pytest.mark.parametrize("payload", ["text", [1, "two", None], 42, 1.5, True, {"nested": {"deep": [1]}}],
                         ids=["string", "array", "int", "float", "bool", "object"])
def test_method_payloads_of_every_json_type_pass_through(hub, registry, clients, payload):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    answer_with(client)
    result = registry.invoke_device_method("dev1", CloudToDeviceMethod(
        method_name="echo", payload=payload, response_timeout_in_seconds=10))
    assert result.status == 200
    assert result.payload == {"method": "echo", "echo": payload}


def test_method_payload_over_128kb_is_refused(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    seen = answer_with(client)
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("dev1", CloudToDeviceMethod(
            method_name="big", payload="x" * (128 * 1024 + 16), response_timeout_in_seconds=10))
    assert e.value.response.status_code in (400, 413)
    assert seen == []


@pytest.mark.parametrize("timeout", [1, 301])
def test_method_response_timeout_outside_5_to_300_is_400(hub, registry, clients, timeout):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    seen = answer_with(client)
    with pytest.raises(HttpOperationError) as e:
        registry.invoke_device_method("dev1", CloudToDeviceMethod(method_name="x", response_timeout_in_seconds=timeout))
    assert e.value.response.status_code == 400
    assert seen == []
