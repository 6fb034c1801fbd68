"""Device authentication over MQTT (AZURE-COMPAT §1.1, §2.1): bad credentials fail quickly with the error
the SDK gives for CONNACK rc 4/5 (UnauthorizedError, surfaced as CredentialError); good ones connect."""

from __future__ import annotations

import time

import pytest
from azure.iot.device.exceptions import CredentialError

from harness import RawMqtt, device_sas, new_key, run_with_timeout, wait_for

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    pytest.mark.hub_setups(),  # SQLite, PostgreSQL, three replicas behind HAProxy (conftest.py)
]


def assert_refused(clients, hub, device_id, key, module_id=None):
    client = clients.open(hub, device_id, key, module_id, connect=False)
    started = time.monotonic()
    with pytest.raises(CredentialError):
        run_with_timeout(client.connect, 15, "connect with bad credentials")
    assert time.monotonic() - started < 5, "a refused CONNECT must be answered at once"
    assert not client.connected


def test_right_key_connects_and_secondary_key_too(hub, registry, clients):
    created = registry.create_device_with_sas("dev1", "", "", "enabled")
    sk = created.authentication.symmetric_key
    assert clients.open(hub, "dev1", sk.primary_key).connected
    # a second connection of the same identity replaces the first (AZURE-COMPAT §1.1)
    assert clients.open(hub, "dev1", sk.secondary_key).connected


def test_wrong_key_is_refused(hub, registry, clients):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    assert_refused(clients, hub, "dev1", new_key())


def test_another_modules_key_is_refused(hub, registry, clients):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    registry.create_module_with_sas("dev1", "m1", None, "", "")
    other = registry.create_module_with_sas("dev1", "m2", None, "", "").authentication.symmetric_key.primary_key
    assert_refused(clients, hub, "dev1", other, module_id="m1")


def test_device_key_does_not_open_its_modules(hub, registry, clients):
    dev_key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    registry.create_module_with_sas("dev1", "m1", None, "", "")
    assert_refused(clients, hub, "dev1", dev_key, module_id="m1")


def test_unknown_device_is_refused(hub, registry, clients):
    assert_refused(clients, hub, "nobody", new_key())


def test_deleted_device_is_refused(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    registry.delete_device("dev1")
    assert_refused(clients, hub, "dev1", key)


def test_deleted_module_is_refused(hub, registry, clients):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    key = registry.create_module_with_sas("dev1", "m1", None, "", "").authentication.symmetric_key.primary_key
    registry.delete_module("dev1", "m1")
    assert_refused(clients, hub, "dev1", key, module_id="m1")


def test_disabled_device_is_refused(hub, registry, clients):
    created = registry.create_device_with_sas("dev1", "", "", "enabled")
    sk = created.authentication.symmetric_key
    registry.update_device_with_sas("dev1", "*", sk.primary_key, sk.secondary_key, "disabled")
    assert_refused(clients, hub, "dev1", sk.primary_key)


def test_deleting_a_connected_device_closes_its_connection(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    assert client.connected
    registry.delete_device("dev1")
    wait_for(lambda: not client.connected, 10, "the hub to drop the deleted device's connection")


def test_old_key_stops_working_after_key_rotation(hub, registry, clients):
    created = registry.create_device_with_sas("dev1", "", "", "enabled")
    old = created.authentication.symmetric_key.primary_key
    new = new_key()
    registry.update_device_with_sas("dev1", created.etag, new, new_key(), "enabled")
    assert_refused(clients, hub, "dev1", old)
    assert clients.open(hub, "dev1", new).connected


# raw CONNECTs: token forms the SDK never sends on its own


def raw_connack(hub, device_id, token):
    raw = RawMqtt(hub)
    try:
        return raw.connect(device_id, "", token=token)
    finally:
        raw.close()


def test_raw_connect_with_a_valid_token_is_accepted(hub, registry):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    assert raw_connack(hub, "dev1", device_sas(hub.host, "dev1", key)) == 0


def test_expired_token_is_refused(hub, registry):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    expired = device_sas(hub.host, "dev1", key, expiry=int(time.time()) - 3600)
    assert raw_connack(hub, "dev1", expired) in (4, 5)


def test_token_within_clock_skew_is_accepted(hub, registry):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    recently_expired = device_sas(hub.host, "dev1", key, expiry=int(time.time()) - 60)
    assert raw_connack(hub, "dev1", recently_expired) == 0


def test_token_for_another_device_is_refused(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    key2 = registry.create_device_with_sas("dev2", "", "", "enabled").authentication.symmetric_key.primary_key
    assert raw_connack(hub, "dev1", device_sas(hub.host, "dev2", key2)) in (4, 5)


def test_token_for_another_hub_is_refused(hub, registry):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    assert raw_connack(hub, "dev1", device_sas("otherhub.example", "dev1", key)) in (4, 5)


def test_garbage_password_is_refused(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    assert raw_connack(hub, "dev1", "SharedAccessSignature nonsense") in (4, 5)


def test_disabling_a_connected_device_closes_its_connection(hub, registry, clients):
    created = registry.create_device_with_sas("dev1", "", "", "enabled")
    sk = created.authentication.symmetric_key
    client = clients.open(hub, "dev1", sk.primary_key)
    registry.update_device_with_sas("dev1", "*", sk.primary_key, sk.secondary_key, "disabled")
    wait_for(lambda: not client.connected, 10, "the hub to drop the disabled device's connection")


def test_sdk_token_renewal_reconnects_and_keeps_the_session(hub, registry, clients):
    import queue

    from azure.iot.hub.models import Twin, TwinProperties

    from harness import set_handler

    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    # The SDK renews 120 s before expiry: with a 124 s token it re-authorizes (DISCONNECT, CONNECT with a
    # new password, no re-SUBSCRIBE) about 4 s after connecting.
    client = clients.open(hub, "dev1", key, sastoken_ttl=124)
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)
    states: list[bool] = []
    client.on_connection_state_change = lambda: states.append(client.connected)
    wait_for(lambda: False in states and client.connected, 15, "the SDK to renew its token and reconnect")

    updated = registry.update_twin("dev1", Twin(properties=TwinProperties(desired={"renewed": True})), "*")
    # the SDK may first hand over the twin it GETs after reconnecting ({"$version": 1}); then the real patch
    patch = patches.get(timeout=10)
    if "renewed" not in patch:
        patch = patches.get(timeout=10)
    assert patch == {"renewed": True, "$version": updated.properties.desired["$version"]}
