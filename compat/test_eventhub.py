"""The Event Hubs-compatible endpoint (issue 16): the unmodified `azure-eventhub` `EventHubConsumerClient`, given
the connection string of `outpost hub eventhub-connection-string` and the hub's CA, reads what unmodified
`azure-iot-device` devices and modules send, and the twin change events their twins cause, over AMQP on 5671.

Each hub listens on 5671 (and HTTPS on 443) of its own loopback address, as the clients dial those ports."""

from __future__ import annotations

import datetime
import json
import queue
import threading
import time

import pytest
from azure.eventhub import EventHubConsumerClient
from azure.iot.device import Message
from azure.iot.hub.models import Twin, TwinProperties

from harness import Hub, HubError, free_port, run_with_timeout

pytestmark = pytest.mark.docker_free  # the real SDKs and the outpost binary only: no Docker

TIMEOUT = 20  # seconds any one wait may take


def eventhub_connection_string(hub: Hub) -> str:
    out = hub.run_cli(["hub", "eventhub-connection-string", "--data-dir", str(hub.data_dir)], hub_env=False)
    line = out.stdout.strip()
    assert line.startswith(f"Endpoint=sb://{hub.host}/;SharedAccessKeyName=iothubowner;SharedAccessKey="), line
    assert ";EntityPath=" in line, line
    return line


class Consumer:
    """An `EventHubConsumerClient.receive` running on its own thread, collecting what it gets."""

    def __init__(self, hub: Hub, consumer_group: str = "$Default", retry_total: int = 3, transport_type=None,
                 **receive) -> None:
        options = {"transport_type": transport_type} if transport_type is not None else {}
        self.client = EventHubConsumerClient.from_connection_string(
            eventhub_connection_string(hub), consumer_group=consumer_group,
            connection_verify=str(hub.ca_path), retry_total=retry_total, **options)
        self.events: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.initialized: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, kwargs=receive, daemon=True)
        self.thread.start()

    def _run(self, **receive) -> None:
        try:
            self.client.receive(
                on_event=lambda ctx, event: self.events.put((ctx.partition_id, event)),
                on_error=lambda ctx, error: self.errors.put(error),
                on_partition_initialize=lambda ctx: self.initialized.put(ctx.partition_id),
                **receive)
        except Exception as error:  # noqa: BLE001 - handed to the test's thread
            self.errors.put(error)

    def take(self, count: int, timeout: float = TIMEOUT) -> list:
        """The next `count` events (partition id, EventData)."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                errors = list(self.errors.queue)
                raise AssertionError(f"got {len(got)} of {count} events within {timeout} s; errors: {errors}")
            try:
                got.append(self.events.get(timeout=min(left, 0.5)))
            except queue.Empty:
                continue
        return got

    def nothing_more(self, within: float = 2.0) -> bool:
        try:
            extra = self.events.get(timeout=within)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected event {extra[1]}")

    def close(self) -> None:
        self.client.close()
        self.thread.join(10)


@pytest.fixture
def consumers():
    opened: list[Consumer] = []

    def open_(hub: Hub, **kwargs) -> Consumer:
        consumer = Consumer(hub, **kwargs)
        opened.append(consumer)
        return consumer

    yield open_
    for consumer in opened:
        run_with_timeout(consumer.close, 15, "closing a consumer")


def make_device(registry, device_id: str) -> str:
    return registry.create_device_with_sas(device_id, "", "", "enabled").authentication.symmetric_key.primary_key


def send(client, body, **props) -> None:
    run_with_timeout(lambda: client.send_message(body), TIMEOUT, "send_message")


def system(event, name: str):
    value = event.system_properties.get(name.encode())
    return value.decode() if isinstance(value, bytes) else value


def bodies(events) -> list[str]:
    return [event.body_as_str() for _, event in events]


def telemetry(events) -> list:
    return [(p, e) for p, e in events if system(e, "iothub-message-source") == "Telemetry"]


def test_consumer_receives_device_and_module_telemetry_with_properties_and_annotations(
        amqp_hub, clients, consumers):
    registry = amqp_hub.registry()
    key = make_device(registry, "sensor")
    module_key = registry.create_module_with_sas("sensor", "filter", "", "", "").authentication \
        .symmetric_key.primary_key
    device = clients.open(amqp_hub, "sensor", key)
    module = clients.open(amqp_hub, "sensor", module_key, module_id="filter")
    consumer = consumers(amqp_hub, starting_position="-1")

    msg = Message('{"temp": 21}', message_id="mid-1", content_type="application/json", content_encoding="utf-8")
    msg.correlation_id = "corr-1"
    msg.custom_properties = {"alert": "true", "sp ace": "a b"}
    send(device, msg)
    send(device, Message(b"\xff\xfe\x00binary"))
    send(module, Message("from the module"))

    got = consumer.take(3)
    partitions = {p for p, _ in got}
    assert len(partitions) == 1, "one device's messages (and its modules') share a partition"
    (_, first), (_, second), (_, third) = got
    assert first.body_as_str() == '{"temp": 21}'
    assert first.message_id == "mid-1"
    assert first.correlation_id == "corr-1"
    assert first.content_type == "application/json"
    assert system(first, "content-encoding") == "utf-8"
    assert first.properties == {b"alert": b"true", b"sp ace": b"a b"}
    assert system(first, "iothub-connection-device-id") == "sensor"
    assert system(first, "iothub-connection-module-id") is None
    assert system(first, "iothub-connection-auth-method") == \
        '{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}'
    assert system(first, "iothub-message-source") == "Telemetry"
    enqueued = first.system_properties[b"iothub-enqueuedtime"]
    assert abs(enqueued.timestamp() - first.enqueued_time.timestamp()) < 1 if isinstance(
        enqueued, datetime.datetime) else abs(enqueued / 1000 - first.enqueued_time.timestamp()) < 1
    assert (first.sequence_number, second.sequence_number, third.sequence_number) == (0, 1, 2)
    assert int(first.offset) < int(second.offset) < int(third.offset)

    assert b"".join(second.body) == b"\xff\xfe\x00binary", "the body exactly as sent"
    assert third.body_as_str() == "from the module"
    assert system(third, "iothub-connection-module-id") == "filter"
    assert '"scope":"module"' in system(third, "iothub-connection-auth-method")


def sent_six(amqp_hub, clients, consumers) -> tuple[object, str, list]:
    """A device that sent six messages, its partition, and the six events as read from the earliest."""
    key = make_device(amqp_hub.registry(), "sensor")
    device = clients.open(amqp_hub, "sensor", key)
    for i in range(6):
        send(device, f"m{i}")
    earliest = consumers(amqp_hub, starting_position="-1")
    events = earliest.take(6)
    assert bodies(events) == [f"m{i}" for i in range(6)]
    earliest.close()
    return device, events[0][0], [e for _, e in events]


def test_receivers_start_from_every_position_the_clients_send(amqp_hub, clients, consumers):
    device, partition, events = sent_six(amqp_hub, clients, consumers)

    by_offset = consumers(amqp_hub, partition_id=partition, starting_position=events[2].offset)
    assert bodies(by_offset.take(3)) == ["m3", "m4", "m5"]
    by_offset_inclusive = consumers(amqp_hub, partition_id=partition, starting_position=events[2].offset,
                                    starting_position_inclusive=True)
    assert bodies(by_offset_inclusive.take(4)) == ["m2", "m3", "m4", "m5"]
    by_sequence = consumers(amqp_hub, partition_id=partition, starting_position=events[1].sequence_number,
                            starting_position_inclusive=True)
    assert bodies(by_sequence.take(5)) == ["m1", "m2", "m3", "m4", "m5"]
    by_time = consumers(amqp_hub, partition_id=partition, starting_position=events[3].enqueued_time)
    assert bodies(by_time.take(2)) == ["m4", "m5"]
    for consumer in (by_offset, by_offset_inclusive, by_sequence, by_time):
        consumer.nothing_more(within=0.5)

    latest = consumers(amqp_hub, partition_id=partition, starting_position="@latest")
    latest.initialized.get(timeout=TIMEOUT)
    # The receiver attaches after `on_partition_initialize`: send until one arrives; none of the six may.
    deadline = time.monotonic() + TIMEOUT
    got = []
    n = 0
    while not got:
        assert time.monotonic() < deadline, f"@latest received nothing; errors: {list(latest.errors.queue)}"
        send(device, f"new{n}")
        n += 1
        try:
            got.append(latest.events.get(timeout=1))
        except queue.Empty:
            pass
    assert got[0][1].body_as_str().startswith("new")


def test_a_consumer_that_resumes_from_its_last_offset_gets_every_event_once(amqp_hub, clients, consumers):
    device, partition, events = sent_six(amqp_hub, clients, consumers)
    first = consumers(amqp_hub, partition_id=partition, starting_position="-1")
    seen = first.take(6)
    last_offset = seen[-1][1].offset
    first.close()
    for i in range(6, 9):
        send(device, f"m{i}")
    resumed = consumers(amqp_hub, partition_id=partition, starting_position=last_offset)
    assert bodies(resumed.take(3)) == ["m6", "m7", "m8"]
    resumed.nothing_more(within=1)


def test_two_consumer_groups_read_independently(amqp_hub, clients, consumers):
    out = amqp_hub.run_cli(["hub", "consumer-group", "create", "--data-dir", str(amqp_hub.data_dir), "analytics"],
                           hub_env=False)
    assert "analytics" in out.stdout
    listed = amqp_hub.run_cli(["hub", "consumer-group", "list", "--data-dir", str(amqp_hub.data_dir)],
                              hub_env=False).stdout.split()
    assert listed == ["$Default", "analytics"]
    key = make_device(amqp_hub.registry(), "sensor")
    device = clients.open(amqp_hub, "sensor", key)
    default = consumers(amqp_hub, starting_position="-1")
    analytics = consumers(amqp_hub, consumer_group="analytics", starting_position="-1")
    for i in range(3):
        send(device, f"m{i}")
    assert bodies(default.take(3)) == ["m0", "m1", "m2"]
    default.close()
    assert bodies(analytics.take(3)) == ["m0", "m1", "m2"], "closing one group's reader leaves the other's"

    unknown = consumers(amqp_hub, consumer_group="nobody", partition_id="0", starting_position="-1", retry_total=0)
    error = unknown.errors.get(timeout=TIMEOUT)
    assert "nobody" in str(error) or "not found" in str(error).lower() or "NotFound" in type(error).__name__, error


def test_events_sent_around_a_hub_restart_are_all_there_afterwards_and_a_live_reader_gets_each_once(
        amqp_hub, clients, consumers):
    key = make_device(amqp_hub.registry(), "sensor")
    device = clients.open(amqp_hub, "sensor", key)
    live = consumers(amqp_hub, starting_position="-1", retry_total=10)
    for i in range(3):
        send(device, f"before{i}")
    assert bodies(live.take(3)) == [f"before{i}" for i in range(3)]
    run_with_timeout(device.shutdown, TIMEOUT, "shutdown")
    amqp_hub.restart()
    device = clients.open(amqp_hub, "sensor", key)
    for i in range(3):
        send(device, f"after{i}")
    # The reader reconnects by itself and resumes after the last event it got.
    assert bodies(live.take(3, timeout=40)) == [f"after{i}" for i in range(3)]
    live.nothing_more(within=1)
    consumer = consumers(amqp_hub, starting_position="-1")
    events = consumer.take(6)
    assert bodies(events) == [f"before{i}" for i in range(3)] + [f"after{i}" for i in range(3)]
    assert [e.sequence_number for _, e in events] == list(range(6))


def test_twin_changes_arrive_as_twin_change_events(amqp_hub, clients, consumers):
    registry = amqp_hub.registry()
    key = make_device(registry, "sensor")
    device = clients.open(amqp_hub, "sensor", key)
    consumer = consumers(amqp_hub, starting_position="-1")
    run_with_timeout(lambda: device.patch_twin_reported_properties({"temperature": 21}), TIMEOUT, "reported patch")
    twin = registry.get_twin("sensor")
    registry.update_twin("sensor", Twin(properties=TwinProperties(desired={"interval": 5})), twin.etag)

    (_, reported), (_, desired) = consumer.take(2)
    for event in (reported, desired):
        assert system(event, "iothub-message-source") == "twinChangeEvents"
        assert system(event, "iothub-connection-device-id") == "sensor"
        assert event.content_type == "application/json"
        assert event.properties[b"hubName"]
        assert event.properties[b"deviceId"] == b"sensor"
        assert event.properties[b"iothub-message-schema"] == b"twinChangeNotification"
        assert event.properties[b"opType"] == b"updateTwin"
        assert event.properties[b"operationTimestamp"]
    assert reported.body_as_json()["properties"]["reported"]["temperature"] == 21
    assert "$version" in reported.body_as_json()["properties"]["reported"]
    assert desired.body_as_json()["properties"]["desired"]["interval"] == 5
    assert desired.body_as_json()["version"] > reported.body_as_json()["version"]


def test_hub_and_partition_properties(amqp_hub, clients, consumers):
    key = make_device(amqp_hub.registry(), "sensor")
    device = clients.open(amqp_hub, "sensor", key)
    send(device, "one")
    client = EventHubConsumerClient.from_connection_string(
        eventhub_connection_string(amqp_hub), consumer_group="$Default", connection_verify=str(amqp_hub.ca_path))
    try:
        hub_properties = run_with_timeout(client.get_eventhub_properties, TIMEOUT, "get_eventhub_properties")
        assert hub_properties["partition_ids"] == ["0", "1", "2", "3"]
        assert hub_properties["eventhub_name"] == eventhub_connection_string(amqp_hub).split("EntityPath=")[1]
        sizes = []
        for partition in hub_properties["partition_ids"]:
            properties = run_with_timeout(lambda: client.get_partition_properties(partition), TIMEOUT,
                                          "get_partition_properties")
            assert properties["id"] == partition
            sizes.append(properties["is_empty"])
            if not properties["is_empty"]:
                assert properties["last_enqueued_sequence_number"] == 0
                assert properties["beginning_sequence_number"] == 0
        assert sizes.count(False) == 1, "one event, one partition"
    finally:
        client.close()


def test_the_partition_count_is_fixed_and_the_connection_string_names_a_non_default_port(hub):
    off = hub.run_cli(["hub", "eventhub-connection-string", "--data-dir", str(hub.data_dir)], hub_env=False,
                      check=False)
    assert off.returncode != 0 and "--amqp-port 0" in off.stderr, "a hub without AMQP says so"
    hub.stop()
    hub.amqp_port = free_port(hub.host)
    hub.extra_args = ["--partitions", "4"]
    hub.start()
    out = hub.run_cli(["hub", "eventhub-connection-string", "--data-dir", str(hub.data_dir)], hub_env=False)
    assert out.stdout.startswith(f"Endpoint=sb://{hub.host}:{hub.amqp_port}/;"), out.stdout
    hub.stop()
    hub.extra_args = ["--partitions", "8"]
    with pytest.raises(HubError, match="has 4 partitions, not 8"):
        hub.start(timeout=10)


def test_a_consumer_over_websocket_on_the_https_port_reads_the_same_events(amqp_hub, clients):
    from azure.eventhub import TransportType

    key = make_device(amqp_hub.registry(), "sensor")
    device = clients.open(amqp_hub, "sensor", key)
    send(device, "over websocket")
    consumer = Consumer(amqp_hub, transport_type=TransportType.AmqpOverWebsocket, starting_position="-1")
    try:
        (_, event), = consumer.take(1)
        assert event.body_as_str() == "over websocket"
        assert system(event, "iothub-connection-device-id") == "sensor"
    finally:
        run_with_timeout(consumer.close, 15, "closing a consumer")


def test_outpost_monitor_shows_twin_changes_only_when_asked(hub, clients):
    key = make_device(hub.registry(), "sensor")
    device = clients.open(hub, "sensor", key)
    run_with_timeout(lambda: device.patch_twin_reported_properties({"temperature": 21}), TIMEOUT, "reported patch")
    send(device, "telemetry")
    plain = hub.run_cli(["monitor", "--from-start", "--count", "1", "--timeout", "10"]).stdout.splitlines()
    assert [json.loads(line)["body"] for line in plain] == ["telemetry"]
    both = hub.run_cli(["monitor", "--from-start", "--twin-changes", "--count", "2", "--timeout", "10"]) \
        .stdout.splitlines()
    first, second = (json.loads(line) for line in both)
    assert first["messageSource"] == "twinChangeEvents"
    assert json.loads(first["body"])["properties"]["reported"]["temperature"] == 21
    assert second["body"] == "telemetry"
