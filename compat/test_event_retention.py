"""The hub's device-to-cloud event stream is pruned past its retention (`outpost hub serve --event-retention`,
`--event-max-bytes`; issue 9, item 8)."""

from __future__ import annotations

import subprocess

import pytest

from harness import API_VERSION, outpost_bin, run_with_timeout, wait_for

pytestmark = pytest.mark.docker_free  # the real SDKs and the outpost binary only: no Docker


def read_events(hub, after: int = 0) -> list[dict]:
    got = hub.rest_session().get(f"{hub.base_url}/events", params={"api-version": API_VERSION, "after": after})
    assert got.status_code == 200, got.text
    return got.json()["events"]


def test_serve_help_documents_the_retention_flags():
    out = subprocess.run([str(outpost_bin()), "hub", "serve", "--help"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert "--event-retention" in out and "[default: 1d]" in out
    assert "--event-max-bytes" in out and "[default: 1GiB]" in out


def test_events_older_than_the_retention_are_pruned_and_sequence_numbers_go_on(hub, registry, clients):
    hub.extra_args = ["--event-retention", "2s"]
    hub.restart()
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    for i in range(3):
        run_with_timeout(lambda i=i: client.send_message(f"old {i}"), 15, "send_message")
    old = read_events(hub)
    assert [e["body"] for e in old] == ["old 0", "old 1", "old 2"]

    wait_for(lambda: read_events(hub) == [], 10, "the events older than 2 s to be pruned")
    run_with_timeout(lambda: client.send_message("new"), 15, "send_message")
    # A reader behind the retention gets what is kept; sequence numbers are not reused.
    [new] = read_events(hub, after=old[0]["sequenceNumber"])
    assert new["body"] == "new"
    assert new["sequenceNumber"] == old[-1]["sequenceNumber"] + 1


def test_the_oldest_events_past_the_size_cap_are_pruned(hub, registry, clients):
    hub.extra_args = ["--event-max-bytes", "2KiB"]
    hub.restart()
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    for i in range(20):
        run_with_timeout(lambda i=i: client.send_message(f"reading {i:02}"), 15, "send_message")

    def kept():
        bodies = [e["body"] for e in read_events(hub)]
        return bodies if len(bodies) < 20 else None

    bodies = wait_for(kept, 15, "the oldest events past 2 KiB to be pruned")
    assert bodies, "the newest events are kept"
    assert bodies[-1] == "reading 19"
    assert bodies == [f"reading {i:02}" for i in range(20 - len(bodies), 20)]


def test_bad_retention_settings_are_refused(tmp_path):
    for flag, value in [("--event-retention", "0s"), ("--event-retention", "1w"), ("--event-max-bytes", "1GB")]:
        done = subprocess.run([str(outpost_bin()), "hub", "serve", "--data-dir", str(tmp_path / "hub"), flag, value],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and flag in done.stderr, (flag, value, done.stderr)
