"""The edge hub's store-and-forward limits: messages older than their route's TTL are dropped and counted, and
a full disk quota behaves as documented in docs/operations.md (`reject`: senders get no acknowledgement, nothing
acknowledged is lost; `drop-oldest`: the oldest messages make room and are counted as dropped).
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
from test_edge_hub import deploy, edge_manifest
from test_edge_offline import hub_events

SENDER = textwrap.dedent("""\
    # Sends `count` messages of `size` bytes as a downstream device; stops at the first message the edge does not
    # acknowledge within 5 s and prints how many were acknowledged.
    import sys, threading
    from azure.iot.device import IoTHubDeviceClient, Message
    connection_string, ca, count, size = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3]), int(sys.argv[4])
    client = IoTHubDeviceClient.create_from_connection_string(connection_string, server_verification_cert=ca)
    client.connect()
    acknowledged = 0
    for seq in range(1, count + 1):
        message = Message(str(seq).ljust(size, "x"))
        message.custom_properties["seq"] = str(seq)
        done = threading.Event()
        threading.Thread(target=lambda: (client.send_message(message), done.set()), daemon=True).start()
        if not done.wait(5):
            break
        acknowledged = seq
    print(acknowledged, flush=True)
    import os
    os._exit(0)
""")

LEAVES = {"leaves": {"route": "FROM /messages/* INTO $upstream", "priority": 0, "timeToLiveSecs": 0}}


def leaf_for(hub, edge) -> str:
    leaf = hub.cli_json("device", "create", f"leaf-{uuid.uuid4().hex[:4]}", "--parent", edge.device_id)
    key = leaf["authentication"]["symmetricKey"]["primaryKey"]
    return f"HostName={hub.host};DeviceId={leaf['deviceId']};SharedAccessKey={key};GatewayHostName={edge.host}"


def send(tmp_path, edge, connection_string: str, count: int, size: int) -> int:
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    run = subprocess.run([sys.executable, str(script), connection_string, str(edge.ca_path), str(count), str(size)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.strip().splitlines()[-1])


def received_seqs(hub, start: int, settle: float = 5.0, timeout: float = 120) -> list[int]:
    """Every message the hub stores after `start`, read until nothing new arrives for `settle` seconds."""
    seqs, after, quiet_since, deadline = [], start, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - quiet_since < settle and time.monotonic() < deadline:
        events, after = hub_events(hub, after)
        if events:
            quiet_since = time.monotonic()
            seqs.extend(int(e["properties"]["seq"]) for e in events)
        else:
            time.sleep(0.3)
    return seqs


def started_edge(hub, tmp_path, loopback, routes, ttl=7200, store=""):
    edge = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next(), extra=store)
    deploy(hub, edge.device_id, edge_manifest({}, routes, ttl=ttl), tmp_path)
    edge.start()
    return edge


def test_messages_older_than_their_ttl_are_dropped_and_counted(hub, tmp_path, loopback):
    routes = {"leaves": {"route": "FROM /messages/* INTO $upstream", "priority": 0, "timeToLiveSecs": 2}}
    edge = started_edge(hub, tmp_path, loopback, routes)
    try:
        connection_string = leaf_for(hub, edge)
        assert send(tmp_path, edge, connection_string, 0, 10) == 0  # one sync: the edge learns the leaf
        _, start = hub_events(hub, None)
        hub.stop()
        assert send(tmp_path, edge, connection_string, 20, 100) == 20
        time.sleep(4)
        hub.start()
        edge.wait_online(60, "the edge back online")
        assert received_seqs(hub, start) == []
        stats = edge.stats()
        assert stats["expired"] == 20 and stats["queued"] == 0, stats
    finally:
        edge.cleanup()


def test_a_full_store_refuses_new_messages_and_loses_nothing_acknowledged(hub, tmp_path, loopback):
    edge = started_edge(hub, tmp_path, loopback, LEAVES, store='\n[store]\nquota_mib = 1\nwhen_full = "reject"\n')
    try:
        connection_string = leaf_for(hub, edge)
        send(tmp_path, edge, connection_string, 0, 10)
        _, start = hub_events(hub, None)
        hub.stop()
        acknowledged = send(tmp_path, edge, connection_string, 400, 10_000)
        assert 0 < acknowledged < 400, f"a 1 MiB store must fill before 4 MB are sent (acknowledged {acknowledged})"
        full = edge.stats()
        assert full["diskBytes"] <= 1 << 20 and full["dropped"] == 0, full
        hub.start()
        seqs = received_seqs(hub, start)
        assert set(range(1, acknowledged + 1)) <= set(seqs), "an acknowledged message was lost"
    finally:
        edge.cleanup()


def test_a_full_store_with_drop_oldest_keeps_the_newest_and_counts_the_rest(hub, tmp_path, loopback):
    store = '\n[store]\nquota_mib = 1\nwhen_full = "drop-oldest"\n'
    edge = started_edge(hub, tmp_path, loopback, LEAVES, store=store)
    try:
        connection_string = leaf_for(hub, edge)
        send(tmp_path, edge, connection_string, 0, 10)
        _, start = hub_events(hub, None)
        hub.stop()
        assert send(tmp_path, edge, connection_string, 300, 10_000) == 300
        stats = edge.stats()
        assert stats["dropped"] > 0, stats
        hub.start()
        seqs = received_seqs(hub, start)
        assert seqs and seqs[-1] == 300, "the newest messages must survive"
        assert len(set(seqs)) + stats["dropped"] == 300, (len(set(seqs)), stats)
        assert seqs == sorted(seqs)
    finally:
        edge.cleanup()
