"""Safe rollouts (issue 12): five edge daemons (process runtime) in one target. A deployment whose new module exits
at once fails on the canary, which goes back to its previous modules while the four others never receive it; a
good deployment reaches 1, then 2, then all 5 devices, each wave after the previous one stayed healthy, across a
hub restart in the middle; `outpost deployment` shows and steers a rollout."""

from __future__ import annotations

import copy
import json
import sys
import time

import pytest
from azure.iot.hub.models import Twin

from edge_harness import Edge, deployment, wait_reported
from harness import API_VERSION, wait_for

pytestmark = [
    pytest.mark.docker_free,
    # About 30 s per engine.
    pytest.mark.hub_setups("sqlite", "postgres"),
]

DEVICES = [f"roll-{i}" for i in range(5)]
TAGS = {"fleet": "rollout"}


def module(code: str) -> dict:
    return {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
            "startupOrder": 0, "settings": {"path": sys.executable, "args": ["-c", code]}}


SLEEPER = module("import time\nwhile True: time.sleep(1)")
CRASHER = module("raise SystemExit(1)")


def rest_put(hub, config_id: str, body: dict):
    return hub.rest_session().put(f"{hub.base_url}/configurations/{config_id}?api-version={API_VERSION}",
                                  json=body, timeout=30)


def put(hub, config_id: str, priority: int, modules: dict, rollout: dict | None = None) -> dict:
    body = {"id": config_id, "schemaVersion": "1.0", "targetCondition": "tags.fleet = 'rollout'",
            "priority": priority, "labels": {}, "metrics": {"queries": {}},
            "content": {"modulesContent": copy.deepcopy(deployment(modules)["modulesContent"])}}
    if rollout is not None:
        body["rollout"] = rollout
    answer = rest_put(hub, config_id, body)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def state(hub, config_id: str) -> dict:
    return hub.cli_json("deployment", "show", config_id)["rollout"]["state"]


def desired_modules(registry, device: str) -> dict:
    return registry.get_module_twin(device, "$edgeAgent").properties.desired.get("modules", {})


def running(names):
    def check(reported):
        modules = reported.get("modules") or {}
        return all((modules.get(n) or {}).get("runtimeStatus") == "running" for n in names)
    return check


@pytest.fixture
def edges(hub, tmp_path, loopback):
    daemons = []
    try:
        for device in DEVICES:
            work = tmp_path / device
            work.mkdir()
            daemons.append(Edge(hub, device, work, "process", "unused", loopback.next()))
        registry = hub.registry()
        for device in DEVICES:
            twin = registry.get_twin(device)
            registry.update_twin(device, Twin(tags=TAGS), twin.etag)
        for daemon in daemons:
            daemon.start()
        yield daemons
    finally:
        for daemon in daemons:
            daemon.cleanup()


def test_a_failing_canary_is_rolled_back_and_a_good_deployment_rolls_out_in_waves_across_a_restart(hub, edges):
    registry = hub.registry()
    put(hub, "base", 1, {"basemod": SLEEPER})
    for device in DEVICES:
        wait_reported(hub, device, running(["basemod"]), 90, f"the base deployment running on {device}")
    versions = {d: registry.get_module_twin(d, "$edgeAgent").properties.desired["$version"] for d in DEVICES}

    # (a) A deployment whose new module exits at once: the canary fails and goes back; nobody else gets it.
    invalid = rest_put(hub, "bad", {
        "id": "bad", "targetCondition": "tags.fleet = 'rollout'", "priority": 2,
        "content": {"modulesContent": deployment({"basemod": SLEEPER})["modulesContent"]},
        "rollout": {"waves": ["1", "0%"]}})
    assert invalid.status_code == 400, invalid.text
    assert rest_put(hub, "bad", {"id": "bad", "targetCondition": "*", "content": {"modulesContent": deployment(
        {"basemod": SLEEPER})["modulesContent"]}, "rollout": {"waves": ["1"], "healthQuery": "x ="}}).status_code == 400
    assert hub.rest_session().get(f"{hub.base_url}/configurations/bad?api-version={API_VERSION}").status_code == 404
    put(hub, "bad", 2, {"basemod": SLEEPER, "crasher": CRASHER},
        {"waves": ["1", "2", "100%"], "healthyForSecs": 3, "waveTimeoutSecs": 60, "maxFailures": 0})
    shown = wait_for(lambda: (s := state(hub, "bad"))["phase"] == "rolledBack" and s, 90, "the bad rollout rolled back")
    assert shown["counts"]["rolledBack"] == 1 and shown["counts"]["waiting"] == 4, shown
    (canary, reason), = shown["failures"].items()
    assert "crasher" in reason or "status" in reason, reason
    assert shown["previous"][canary]["base"] == "base"
    wait_for(lambda: "crasher" not in desired_modules(registry, canary), 30, "the canary's previous deployment")
    wait_reported(hub, canary, lambda r: running(["basemod"])(r) and "crasher" not in (r.get("modules") or {}),
                  60, "the canary running its previous modules only")
    for device in DEVICES:
        if device != canary:
            twin = registry.get_module_twin(device, "$edgeAgent")
            assert twin.properties.desired["$version"] == versions[device], f"{device} was given the bad deployment"
            assert "crasher" not in twin.properties.desired["modules"]
    metrics = hub.cli_json("deployment", "show", "bad")["systemMetrics"]["results"]
    assert metrics["rolloutRolledBackCount"] == 1

    # (b) A good deployment: 1, then 2, then all 5, each wave after the previous one stayed healthy for 3 s.
    put(hub, "good", 3, {"basemod": SLEEPER, "extra": SLEEPER},
        {"waves": ["1", "2", "100%"], "healthyForSecs": 3, "waveTimeoutSecs": 90, "maxFailures": 0})
    seen = []
    restarted = False
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        given = sorted(d for d in DEVICES if "extra" in desired_modules(registry, d))
        if not seen or seen[-1] != given:
            seen.append(given)
        if len(given) == 2 and not restarted:
            # (c) A hub restart in the middle: the rollout resumes where it stood.
            hub.restart()
            restarted = True
            assert state(hub, "good")["wave"] == 2
        if state(hub, "good")["phase"] == "completed":
            break
        time.sleep(0.3)
    final = state(hub, "good")
    assert final["phase"] == "completed", final
    assert restarted
    counts = [len(g) for g in seen]
    assert counts[:1] == [0] or counts[0] == 1, seen
    # The devices are read one after another, so a read can land while the last wave's three twins are being
    # written: 3 or 4 is a wave 3 in progress, seen only after 2 and before 5. Waves 1 and 2 add one device each.
    given = [c for c in counts if c]
    assert given[:2] == [1, 2] and given[-1] == 5 and all(2 < c < 5 for c in given[2:-1]), seen
    assert all(set(a) <= set(b) for a, b in zip(seen, seen[1:])), seen
    for device in DEVICES:
        wait_reported(hub, device, running(["basemod", "extra"]), 60, f"the good deployment running on {device}")


def test_a_health_query_one_device_never_satisfies_stops_the_rollout_at_its_wave(hub, edges, tmp_path):
    registry = hub.registry()
    put(hub, "base", 1, {"basemod": SLEEPER})
    for device in DEVICES:
        wait_reported(hub, device, running(["basemod"]), 90, f"the base deployment running on {device}")
    for device in DEVICES:
        if device != "roll-3":
            twin = registry.get_twin(device)
            registry.update_twin(device, Twin(tags={**TAGS, "selftest": "ok"}), twin.etag)
    path = tmp_path / "checked.json"
    path.write_text(json.dumps(deployment({"basemod": SLEEPER, "checked": SLEEPER})))
    created = hub.cli_json("deployment", "create", "checked", "--content", str(path), "--target-condition",
                           "tags.fleet = 'rollout'", "--priority", "5", "--rollout", "1,100%", "--healthy-for", "2s",
                           "--wave-timeout", "10s", "--health-query", "tags.selftest = 'ok'")
    assert created["rollout"]["waves"] == ["1", "100%"] and created["rollout"]["waveTimeoutSecs"] == 10
    assert hub.cli_json("deployment", "pause", "checked")["rollout"]["state"]["phase"] in ("paused", "pending")
    shown = hub.cli_json("deployment", "resume", "checked")["rollout"]["state"]
    assert shown["phase"] in ("rolling", "pending"), shown
    shown = wait_for(lambda: (s := state(hub, "checked"))["phase"] == "rolledBack" and s, 90,
                     "the rollout stopped at the wave of the device that never passes its health query")
    assert shown["wave"] == 2
    assert shown["devices"]["healthy"] == ["roll-0"]
    assert sorted(shown["devices"]["rolledBack"]) == ["roll-1", "roll-2", "roll-3", "roll-4"]
    assert list(shown["failures"]) == ["roll-3"]
    assert "health query" in shown["failures"]["roll-3"]
    wait_for(lambda: all("checked" not in desired_modules(registry, d) for d in DEVICES[1:]), 30,
             "the second wave back on its previous deployment")
    assert "checked" in desired_modules(registry, "roll-0"), "the good canary wave keeps the deployment"
    text = hub.run_cli(["deployment", "show", "checked"]).stdout
    assert "rolledBack" in text and "roll-3" in text
    assert hub.run_cli(["deployment", "abort", "checked"], check=False).returncode == 0
