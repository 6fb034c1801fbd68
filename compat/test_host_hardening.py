"""What `outpost hub serve` and `outpost edge run` ask of their host at start (issue 9, items 5 and 6): the soft
open-files limit raised to the hard limit, data directories 0700 and every file holding keys or tokens 0600,
including in an installation made readable by others before the start.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import uuid
from pathlib import Path

from edge_harness import Edge
from harness import wait_for


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def soft_and_hard_open_files(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError(f"no open-files line in /proc/{pid}/limits")


@contextlib.contextmanager
def low_soft_open_files_limit():
    """Children started inside inherit a soft limit of 256 (the hard limit is left alone)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_hub_raises_its_open_files_limit_and_keeps_its_secrets_private(hub_factory):
    with low_soft_open_files_limit():
        hub = hub_factory()
    soft, hard = soft_and_hard_open_files(hub.proc.pid)
    assert soft == hard, f"soft open-files limit {soft}, hard {hard}"

    secrets = [hub.data_dir / "hub.sqlite", hub.data_dir / "ca.key"]
    wait_for(lambda: (hub.data_dir / "hub.sqlite-wal").exists(), 10, "the database's WAL")
    secrets += [hub.data_dir / "hub.sqlite-wal", hub.data_dir / "hub.sqlite-shm"]
    assert mode(hub.data_dir) == 0o700
    for path in secrets:
        assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"

    # An installation made before the rule: readable by everyone until the next start tightens it.
    hub.stop()
    os.chmod(hub.data_dir, 0o755)
    for path in secrets:
        if path.exists():
            os.chmod(path, 0o644)
    hub.start()
    assert mode(hub.data_dir) == 0o700
    for path in secrets:
        if path.exists():
            assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))} after a restart"


def test_the_edge_raises_its_open_files_limit_and_keeps_its_secrets_private(hub, tmp_path, loopback):
    edge = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next())
    # identities.json from an older installation, readable by everyone.
    agent = edge.data_dir / "agent"
    agent.mkdir(parents=True)
    os.chmod(edge.data_dir, 0o755)
    (agent / "identities.json").write_text("{}")
    os.chmod(agent / "identities.json", 0o644)
    try:
        with low_soft_open_files_limit():
            edge.start()
        soft, hard = soft_and_hard_open_files(edge.proc.pid)
        assert soft == hard, f"soft open-files limit {soft}, hard {hard}"

        data = edge.data_dir
        for directory in [data, data / "agent", data / "edgehub", data / "pki", data / "mnt"]:
            assert mode(directory) == 0o700, f"{directory} is {oct(mode(directory))}"
        for path in [data / "agent" / "identities.json", data / "edgehub" / "edgehub.sqlite",
                     data / "pki" / "ca.key", data / "management.sock"]:
            assert mode(path) == 0o600, f"{path} is {oct(mode(path))}"
        for path in data.glob("edgehub/edgehub.sqlite-*"):
            assert mode(path) == 0o600, f"{path} is {oct(mode(path))}"
    finally:
        edge.cleanup()
