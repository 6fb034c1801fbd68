"""`outpost hub migrate`: a SQLite hub populated through the official SDKs, stopped, copied into PostgreSQL and
started again on it (same data directory, address and port) reads the same through azure-iot-hub (keys,
generation ids, etags, twins with their versions), keeps its service connection string and CA, and its devices
connect with their old keys and receive the C2D message queued before the move. Migrating a running hub, into
a database that already holds a hub, or a data directory that is already a PostgreSQL replica's is refused.

PostgreSQL is Debian's, started here by scripts/postgres.sh on a free loopback port (self-contained: no shared
fixture). Without its binaries the test fails under CI=true and is skipped otherwise."""

from __future__ import annotations

import glob
import os
import queue
import socket
import subprocess

import pytest

from harness import REPO_ROOT, run_with_timeout, set_handler
from test_restart import assert_intact, populate

pytestmark = pytest.mark.docker_free  # the real SDKs, the outpost binary and PostgreSQL: no Docker

SCRIPT = REPO_ROOT / "scripts" / "postgres.sh"


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL; yields the URL of its empty `outpost` database, stops it afterwards."""
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        message = "PostgreSQL's binaries are missing (apt-get install postgresql; scripts/setup-test-env.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "pg"
    started = subprocess.run([str(SCRIPT), "start", str(data), str(port)], capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 0, f"scripts/postgres.sh start failed: {started.stdout}{started.stderr}"
    try:
        yield f"postgres://outpost@127.0.0.1:{port}/outpost"
    finally:
        subprocess.run([str(SCRIPT), "stop", str(data)], capture_output=True, timeout=60)


def migrate(hub, url: str):
    return hub.run_cli(["hub", "migrate", "--data-dir", str(hub.data_dir), "--database", url], hub_env=False,
                       check=False, timeout=60)


def test_a_migrated_hub_reads_the_same_on_postgresql(hub, registry, clients, postgres):
    kept = populate(hub, registry, clients)
    key2 = registry.create_device_with_sas("dev2", "", "", "enabled").authentication.symmetric_key.primary_key
    hub.run_cli(["message", "send", "dev2", "queued before the move", "--property", "k=v"])

    running = migrate(hub, postgres)
    assert running.returncode != 0, "a running hub must not be migrated"
    assert "seems to be running" in running.stderr, running.stderr

    hub.stop()
    moved = migrate(hub, postgres)
    assert moved.returncode == 0, f"stdout: {moved.stdout}\nstderr: {moved.stderr}"
    counts = {line.split(maxsplit=1)[1]: int(line.split()[0])
              for line in moved.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert counts["devices"] == 3, moved.stdout  # dev1, edge1, dev2
    assert counts["queued cloud-to-device messages"] == 1, moved.stdout
    assert counts["shared access policies"] == 5, moved.stdout
    # The database now holds a hub: a second migration is refused and changes nothing (checked below: one
    # message, the same devices).
    again = migrate(hub, postgres)
    assert again.returncode != 0
    assert "not empty" in again.stderr, again.stderr

    # The same data directory, address and ports, now on PostgreSQL.
    hub.extra_args = ["--database", postgres]
    hub.start()
    assert "--database" in " ".join(hub.proc.args)
    assert_intact(hub, hub.registry(), clients, kept)

    # The C2D message queued on SQLite reaches its device on PostgreSQL.
    client = clients.open(hub, "dev2", key2, connect=False)
    received: queue.Queue = queue.Queue()
    set_handler(client, "on_message_received", received.put)
    run_with_timeout(client.connect, 20, "connect of dev2")
    message = received.get(timeout=10)
    assert message.data == b"queued before the move"
    assert message.custom_properties.get("k") == "v"
    with pytest.raises(queue.Empty):
        received.get(timeout=2)
    assert sorted(d.device_id for d in hub.registry().get_devices()) == ["dev1", "dev2", "edge1"]

    # Its data directory is now a replica's: migrating it again is refused.
    hub.stop()
    replica = migrate(hub, postgres)
    assert replica.returncode != 0
    assert "hub on PostgreSQL" in replica.stderr, replica.stderr
