"""Offline, end to end: with the hub stopped, a module and a downstream device send 10,000 messages through the
edge and the module patches its reported properties; the edge daemon is killed with SIGKILL and started again
while the hub is still down; the module comes back and keeps working; then the hub returns and everything
arrives, in order per sender, none lost. Duplicates (at-least-once delivery) are counted and printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid

from edge_harness import Edge
from harness import wait_for
from test_edge_hub import deploy, edge_manifest, python_module

MODULE_MESSAGES = 5_000
LEAF_MESSAGES = 5_000
REPORT_EVERY = 500

BURST = textwrap.dedent("""\
    # Sends numbered messages up to the limit the test writes, remembering the last acknowledged one on disk so
    # that a restart goes on from there; reports its progress every REPORT_EVERY messages.
    import json, os, sys, time
    from azure.iot.device import IoTHubModuleClient, Message
    work, report_every = sys.argv[1], int(sys.argv[2])
    progress_file, limit_file = os.path.join(work, "progress"), os.path.join(work, "limit")
    def read(path, default):
        try:
            return int(open(path).read())
        except (OSError, ValueError):
            return default
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    sent = read(progress_file, 0)
    while True:
        limit = read(limit_file, 0)
        if sent >= limit:
            time.sleep(0.2)
            continue
        sent += 1
        message = Message(json.dumps({"seq": sent}))
        message.custom_properties["seq"] = str(sent)
        client.send_message_to_output(message, "burst")
        with open(progress_file + ".tmp", "w") as f:
            f.write(str(sent))
        os.replace(progress_file + ".tmp", progress_file)
        if sent % report_every == 0:
            client.patch_twin_reported_properties({"progress": sent, "history": {f"p{sent}": sent}})
""")

LEAF = textwrap.dedent("""\
    import sys
    from azure.iot.device import IoTHubDeviceClient, Message
    connection_string, ca, count = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3])
    client = IoTHubDeviceClient.create_from_connection_string(connection_string, server_verification_cert=ca)
    client.connect()
    for seq in range(1, count + 1):
        message = Message(f"leaf {seq}")
        message.custom_properties["seq"] = str(seq)
        client.send_message(message)
    client.shutdown()
""")

ROUTES = {"modules": "FROM /messages/modules/* INTO $upstream",
          "leaves": "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream"}


def hub_events(hub, after: int | None) -> tuple[list[dict], int]:
    """Events after sequence number `after` (None: only the newest sequence number, as the position to start from)."""
    session = hub.rest_session()
    params = {"max": 1000, "api-version": "2021-04-12"}
    if after is not None:
        params["after"] = after
    answer = session.get(f"{hub.base_url}/events", params=params, timeout=30).json()
    return answer["events"], answer["next"]


def test_ten_thousand_messages_survive_a_hub_outage_and_a_sigkill_of_the_edge(hub, tmp_path, loopback):
    edge = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next())
    work = tmp_path / "burst"
    work.mkdir()
    try:
        deploy(hub, edge.device_id, edge_manifest({"burst": python_module(tmp_path, "burst", BURST, str(work),
                                                                           str(REPORT_EVERY))}, ROUTES), tmp_path)
        leaf = hub.cli_json("device", "create", f"leaf-{uuid.uuid4().hex[:4]}", "--parent", edge.device_id)
        edge.start()
        # One sync with the hub: the module runs, the leaf is known to the edge.
        wait_for(lambda: (edge.data_dir / "processes" / "burst" / "pid").exists(), 60, "the module to start")
        leaf_script = tmp_path / "leaf.py"
        leaf_script.write_text(LEAF)
        key = leaf["authentication"]["symmetricKey"]["primaryKey"]
        leaf_cs = f"HostName={hub.host};DeviceId={leaf['deviceId']};SharedAccessKey={key};GatewayHostName={edge.host}"
        warmup = subprocess.run([sys.executable, str(leaf_script), leaf_cs, str(edge.ca_path), "0"], timeout=60,
                                capture_output=True, text=True)
        assert warmup.returncode == 0, warmup.stderr
        _, start = hub_events(hub, None)
        time.sleep(1)

        hub.stop()
        (work / "limit").write_text(str(MODULE_MESSAGES // 2))
        leaf_run = subprocess.run([sys.executable, str(leaf_script), leaf_cs, str(edge.ca_path), str(LEAF_MESSAGES)],
                                  timeout=600, capture_output=True, text=True)
        assert leaf_run.returncode == 0, f"the downstream device failed while the hub was down: {leaf_run.stderr[-2000:]}"
        wait_for(lambda: (work / "progress").exists() and int((work / "progress").read_text()) >= MODULE_MESSAGES // 2,
                 300, "the module's first half")

        edge.kill()
        edge.start()
        (work / "limit").write_text(str(MODULE_MESSAGES))
        wait_for(lambda: int((work / "progress").read_text()) >= MODULE_MESSAGES, 300,
                 "the module to keep working after the edge restarted, hub still down")
        assert not hub.alive()

        hub.start()
        received: dict[str, list[int]] = {}
        after, deadline = start, time.monotonic() + 240

        def unique(sender):
            return len(set(received.get(sender, [])))

        while time.monotonic() < deadline and (unique("burst") < MODULE_MESSAGES or unique("leaf") < LEAF_MESSAGES):
            events, after = hub_events(hub, after)
            for event in events:
                sender = "burst" if event.get("moduleId") == "burst" else "leaf"
                received.setdefault(sender, []).append(int(event["properties"]["seq"]))
            if not events:
                time.sleep(0.5)
        for sender, expected in (("burst", MODULE_MESSAGES), ("leaf", LEAF_MESSAGES)):
            seqs = received.get(sender, [])
            first_seen = list(dict.fromkeys(seqs))
            duplicates = len(seqs) - len(first_seen)
            print(f"{sender}: {len(first_seen)} distinct messages, {duplicates} duplicates")
            assert sorted(first_seen) == list(range(1, expected + 1)), f"{sender} lost messages"
            assert first_seen == sorted(first_seen), f"{sender}'s messages arrived out of order"

        def reported():
            twin = hub.registry().get_module_twin(edge.device_id, "burst")
            props = twin.properties.reported or {}
            return props if props.get("progress") == MODULE_MESSAGES else None

        props = wait_for(reported, 60, "the module's reported properties at the hub")
        assert props["history"] == {f"p{n}": n for n in range(REPORT_EVERY, MODULE_MESSAGES + 1, REPORT_EVERY)}
        print("edge stats:", json.dumps(edge.stats()))
    finally:
        edge.cleanup()
