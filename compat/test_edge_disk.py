"""The edge device's disk budget, through `outpost edge run` (docs/operations.md, "The disk budget"): process
modules' logs rotated by size and count, containers created with a bounded json-file log, images Outpost pulled
removed once unused without restarting anything, and the free-space guard that refuses new messages.

The container tests need the real Docker daemon and the local registry: under CI a missing one fails, elsewhere
they skip.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import uuid

import pytest

from edge_harness import (Edge, deployment, docker, docker_available, need, push_test_image, registry_answers,
                          start_registry)
from harness import wait_for
from test_edge_agent import deploy, sensor
from test_edge_store import LEAVES, leaf_for, send, started_edge


def disk_section(**settings) -> str:
    return "\n[disk]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    need(docker_available(), "the Docker daemon is not reachable")
    proc = start_registry(tmp_path_factory.mktemp("registry"))
    need(registry_answers(), "no registry answers on 127.0.0.1:5000 and Debian's docker-registry is not installed")
    yield
    if proc is not None:
        proc.terminate()


def image_present(image: str) -> bool:
    return docker("image", "inspect", image, check=False).returncode == 0


def running_on(edge: Edge, module: str, image: str):
    info = edge.inspect(module)
    if info and info["Config"]["Image"] == image and info["State"]["Running"]:
        return info
    return None


def test_images_outpost_pulled_are_removed_once_unused_and_nothing_restarts(hub, tmp_path, loopback, registry):
    run = uuid.uuid4().hex[:6]
    old, new = push_test_image(f"gc-old-{run}"), push_test_image(f"gc-new-{run}")
    # The operator's image: on the device before any deployment named it. Outpost never removes it.
    operators = push_test_image(f"gc-operator-{run}")
    for image in (old, new):
        docker("rmi", image, check=False)
    edge = Edge(hub, f"edge-{run}", tmp_path, "docker", f"outpost-test-{run}", loopback.next(),
                extra=disk_section(image_gc_unused_secs=3, image_gc_interval_secs=1))
    try:
        deploy(hub, edge.device_id, deployment({"a": sensor(old), "b": sensor(operators)}), tmp_path)
        edge.start()
        wait_for(lambda: running_on(edge, "a", old) and running_on(edge, "b", operators), 60, "a on the old image")
        time.sleep(5)  # longer than the GC age: images in use stay whatever their age
        assert image_present(old) and image_present(operators)

        deploy(hub, edge.device_id, deployment({"a": sensor(new)}), tmp_path)
        before = wait_for(lambda: running_on(edge, "a", new), 60, "a recreated on the new image")
        wait_for(lambda: edge.inspect("b") is None, 30, "b removed")
        wait_for(lambda: not image_present(old), 30, "the old image removed once unused for 3 s")
        time.sleep(4)  # a few more passes

        after = running_on(edge, "a", new)
        assert after is not None, edge.log_tail()
        assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"]), \
            "image garbage collection restarted a module"
        assert image_present(new), "the image a module runs was removed"
        assert image_present(operators), "an image Outpost did not pull was removed"
        ledger = json.loads((edge.data_dir / "agent" / "images.json").read_text())
        assert set(ledger["images"]) == {new}, ledger
        assert "removed an image no deployed module has used" in edge.log_path.read_text()

        check = edge.cli("check", check=False).stdout
        assert "disk: images" in check and "1 pulled by Outpost" in check, check
    finally:
        edge.cleanup()
        for image in (old, new, operators):
            docker("rmi", image, check=False)


def test_containers_get_a_bounded_json_file_log_unless_create_options_set_one(hub, tmp_path, loopback, registry):
    run = uuid.uuid4().hex[:6]
    image = push_test_image(f"logs-{run}")
    edge = Edge(hub, f"edge-{run}", tmp_path, "docker", f"outpost-test-{run}", loopback.next())
    own_log = {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}
    own = sensor(image)
    own["settings"]["createOptions"] = json.dumps({"Cmd": ["sh", "-c", "sleep 3600"],
                                                   "HostConfig": {"LogConfig": own_log}})
    try:
        deploy(hub, edge.device_id, deployment({"plain": sensor(image), "own": own}), tmp_path)
        edge.start()
        wait_for(lambda: running_on(edge, "plain", image) and running_on(edge, "own", image), 60, "both running")
        assert edge.inspect("plain")["HostConfig"]["LogConfig"] == {
            "Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
        assert edge.inspect("own")["HostConfig"]["LogConfig"] == own_log
        check = edge.cli("check", check=False).stdout
        assert "disk: container logs" in check, check
    finally:
        edge.cleanup()
        docker("rmi", image, check=False)


CHATTY = textwrap.dedent("""\
    # Writes `count` numbered lines of about 100 bytes as fast as it can, then `done`, then idles.
    import sys, time
    count = int(sys.argv[1])
    pad = "x" * 90
    for i in range(1, count + 1):
        sys.stdout.write(f"{i:07d} {pad}\\n")
    sys.stdout.write("done\\n")
    sys.stdout.flush()
    while True:
        time.sleep(1)
""")


def test_a_chatty_process_modules_log_stays_within_size_times_count(hub, tmp_path, loopback):
    script = tmp_path / "chatty.py"
    script.write_text(CHATTY)
    module = {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always", "startupOrder": 0,
              "settings": {"path": sys.executable, "args": [str(script), "40000"]}}
    edge = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next(),
                extra=disk_section(log_max_size_kib=64, log_max_files=3))
    try:
        deploy(hub, edge.device_id, deployment({"chatty": module}), tmp_path)
        edge.start()
        directory = edge.data_dir / "processes" / "chatty"
        wait_for(lambda: (directory / "output.log").exists()
                 and (directory / "output.log").read_text().endswith("done\n"), 90, "the 4 MB of output written")
        files = sorted(p.name for p in directory.iterdir() if p.name.startswith("output.log"))
        sizes = {p.name: p.stat().st_size for p in directory.iterdir() if p.name.startswith("output.log")}
        assert files == ["output.log", "output.log.1", "output.log.2"], files
        assert sum(sizes.values()) <= 3 * 64 * 1024, sizes

        lines = edge.cli("logs", "chatty").stdout.splitlines()
        assert lines[-1] == "done"
        numbers = [int(line.split()[0]) for line in lines[:-1]]
        assert numbers == list(range(numbers[0], 40001)), "the rotated files must read back in order, whole"
        assert len(lines) > 2 * 64 * 1024 // 100, "the logs must read across the rotated files"
        tail = edge.cli("logs", "chatty", "--tail", "3").stdout.splitlines()
        assert [t.split()[0] for t in tail] == ["0039999", "0040000", "done"], tail
    finally:
        edge.cleanup()


def test_below_the_free_space_threshold_messages_are_refused_and_reported(hub, tmp_path, loopback):
    stat = os.statvfs(tmp_path)
    free_mib = stat.f_bavail * stat.f_frsize >> 20
    threshold = free_mib + 1024
    edge = started_edge(hub, tmp_path, loopback, LEAVES, store=disk_section(min_free_mib=threshold))
    try:
        connection_string = leaf_for(hub, edge)
        assert send(tmp_path, edge, connection_string, 0, 10) == 0  # connects: the edge learns the leaf
        assert send(tmp_path, edge, connection_string, 3, 10) == 0, "a message was acknowledged on a full disk"
        stats = edge.stats()
        assert stats["disk"]["refusing"] is True, stats
        assert stats["disk"]["minFreeBytes"] == threshold << 20
        assert stats["disk"]["freeBytes"] < threshold << 20
        assert stats["appended"] == 0, stats
        check = edge.cli("check", check=False)
        assert check.returncode != 0
        assert "FAIL disk: free space" in check.stdout and "refuses new messages" in check.stdout, check.stdout
        assert "disk: message log" in check.stdout and "disk: twin store" in check.stdout
        assert "refusing new messages" in edge.log_path.read_text()
    finally:
        edge.cleanup()
