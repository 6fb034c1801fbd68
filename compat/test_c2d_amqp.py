"""Cloud-to-device messages over AMQP (issue 16): the unmodified `azure-iot-hub` `send_c2d_message` (uamqp, to
`/messages/devicebound` on 5671) reaches a device's `on_message_received` with its properties, and a message that
asks for feedback leaves a feedback record on `/messages/servicebound/feedback`, read here with uamqp's
`ReceiveClient` as IoT Hub's service SDKs read it.

uamqp trusts `certifi.where()` (the SDK passes no CA of its own): the tests point that at the hub's CA, as a
deployment that trusts its hub's CA system-wide would."""

from __future__ import annotations

import json
import queue
import time

import pytest
import uamqp
from azure.core.credentials import AccessToken
from azure.iot.hub import IoTHubRegistryManager

from harness import Hub, connection_string_fields, run_with_timeout, service_sas, set_handler

pytestmark = pytest.mark.docker_free  # the real SDKs and the outpost binary only: no Docker

TIMEOUT = 20


@pytest.fixture
def hub(amqp_hub, monkeypatch) -> Hub:
    import certifi
    monkeypatch.setattr(certifi, "where", lambda: str(amqp_hub.ca_path))
    return amqp_hub


def make_device(registry, device_id: str) -> str:
    return registry.create_device_with_sas(device_id, "", "", "enabled").authentication.symmetric_key.primary_key


def receiving_device(hub: Hub, clients, device_id: str = "sensor"):
    key = make_device(hub.registry(), device_id)
    client = clients.open(hub, device_id, key)
    received: queue.Queue = queue.Queue()
    set_handler(client, "on_message_received", received.put)
    return received


def send_c2d(hub: Hub, device_id: str, body: str, properties: dict) -> None:
    manager = IoTHubRegistryManager.from_connection_string(hub.connection_string)
    try:
        run_with_timeout(lambda: manager.send_c2d_message(device_id, body, properties=properties), TIMEOUT,
                         "send_c2d_message")
    finally:
        manager.amqp_svc_client.disconnect_sync()


def test_send_c2d_message_reaches_the_device_with_its_properties(hub, clients):
    received = receiving_device(hub, clients)
    send_c2d(hub, "sensor", "hello over amqp", {
        "messageId": "m-1", "correlationId": "c-1", "contentType": "application/json",
        "contentEncoding": "utf-8", "alert": "high", "sp ace": "a b"})
    message = received.get(timeout=TIMEOUT)
    assert message.data == b"hello over amqp"
    assert message.message_id == "m-1"
    assert message.correlation_id == "c-1"
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.custom_properties["alert"] == "high"
    assert message.custom_properties["sp ace"] == "a b"


def test_a_message_to_an_unknown_device_is_refused(hub):
    with pytest.raises(Exception, match="(?i)fail"):
        send_c2d(hub, "nobody", "lost", {})


def feedback_records(hub: Hub, want: int) -> list[dict]:
    """Reads feedback messages (accepting them) until `want` records came."""
    host = hub.host
    key = connection_string_fields(hub.connection_string)["SharedAccessKey"]
    expiry = int(time.time()) + 3600
    token = service_sas(host, "iothubowner", key, expiry=expiry)
    auth = uamqp.authentication.JWTTokenAuth(
        audience="https://" + host, uri="https://" + host,
        get_token=lambda: AccessToken(token, expiry),
        token_type=b"servicebus.windows.net:sastoken")
    auth.update_token()
    client = uamqp.ReceiveClient(f"amqps://{host}/messages/servicebound/feedback", auth=auth, timeout=TIMEOUT * 1000)
    records: list[dict] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(records) < want and time.monotonic() < deadline:
            for message in client.receive_message_batch(max_batch_size=10, timeout=2000):
                assert message.properties.content_type == b"application/vnd.microsoft.iothub.feedback.json"
                records.extend(json.loads(b"".join(message.get_data())))
                message.accept()
    finally:
        client.close()
    return records


def test_a_full_feedback_request_produces_a_feedback_record_once_the_device_completes(hub, clients):
    received = receiving_device(hub, clients)
    send_c2d(hub, "sensor", "ack me", {"messageId": "fb-1", "iothub-ack": "full"})
    assert received.get(timeout=TIMEOUT).data == b"ack me"
    records = feedback_records(hub, 1)
    assert len(records) == 1, records
    record = records[0]
    assert record["originalMessageId"] == "fb-1"
    assert record["statusCode"] == "Success"
    assert record["description"] == "Success"
    assert record["deviceId"] == "sensor"
    assert record["deviceGenerationId"]
    assert record["enqueuedTimeUtc"]
    # Accepted feedback is gone: a second reader finds nothing.
    assert feedback_records_within(hub, 3) == []


def feedback_records_within(hub: Hub, seconds: float) -> list[dict]:
    global TIMEOUT
    saved, TIMEOUT = TIMEOUT, seconds
    try:
        return feedback_records(hub, 1)
    finally:
        TIMEOUT = saved


def test_a_message_that_expires_before_the_device_takes_it_leaves_an_expired_record(hub):
    make_device(hub.registry(), "sleeper")
    expiry_ms = int(time.time() * 1000) + 1000
    send_c2d(hub, "sleeper", "too late", {"messageId": "exp-1", "iothub-ack": "negative", "expiryTimeUtc": expiry_ms})
    records = feedback_records(hub, 1)
    assert [(r["originalMessageId"], r["statusCode"], r["deviceId"]) for r in records] == \
        [("exp-1", "Expired", "sleeper")]
