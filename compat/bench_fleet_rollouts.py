"""Figures for docs/benchmarks.md (not collected by default; run this file explicitly): with five edge daemons
(process runtime), how long from a wave becoming good to the next wave's devices reporting the deployment
applied and its modules running, and from the canary reporting a failure to it running its previous modules."""

from __future__ import annotations

import time

import pytest

from edge_harness import wait_reported
from test_fleet_rollouts import CRASHER, DEVICES, SLEEPER, desired_modules, edges, put, running, state  # noqa: F401

pytestmark = [pytest.mark.docker_free, pytest.mark.hub_setups("sqlite")]

HEALTHY_FOR = 3


def applied(hub, device: str, module: str) -> bool:
    twin = hub.registry().get_module_twin(device, "$edgeAgent")
    reported = twin.properties.reported or {}
    return (module in twin.properties.desired.get("modules", {})
            and reported.get("lastDesiredVersion") == twin.properties.desired["$version"]
            and (reported.get("lastDesiredStatus") or {}).get("code") == 200
            and running(list(twin.properties.desired["modules"]))(reported))


def poll(check, timeout: float = 120, interval: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise AssertionError("timed out")


def test_figures(hub, edges):
    registry = hub.registry()
    put(hub, "base", 1, {"basemod": SLEEPER})
    for device in DEVICES:
        wait_reported(hub, device, running(["basemod"]), 90, device)

    put(hub, "bad", 2, {"basemod": SLEEPER, "crasher": CRASHER},
        {"waves": ["1", "2", "100%"], "healthyForSecs": HEALTHY_FOR, "waveTimeoutSecs": 60})

    def canary_failed():
        twin = registry.get_module_twin(DEVICES[0], "$edgeAgent")
        status = ((twin.properties.reported or {}).get("modules") or {}).get("crasher", {}).get("runtimeStatus")
        return status in ("backoff", "failed")
    failed_at = poll(canary_failed)
    back_at = poll(lambda: "crasher" not in desired_modules(registry, DEVICES[0])
                   and applied(hub, DEVICES[0], "basemod")
                   and "crasher" not in ((registry.get_module_twin(DEVICES[0], "$edgeAgent").properties.reported
                                          or {}).get("modules") or {}))
    print(f"\nFIGURE failure reported -> canary running its previous modules: {back_at - failed_at:.2f} s")

    put(hub, "good", 3, {"basemod": SLEEPER, "extra": SLEEPER},
        {"waves": ["1", "2", "100%"], "healthyForSecs": HEALTHY_FOR, "waveTimeoutSecs": 60})
    waves = [[DEVICES[0]], [DEVICES[1]], DEVICES[2:]]
    for index in range(2):
        healthy_at = poll(lambda: all(applied(hub, d, "extra") for d in waves[index]))
        good_at = healthy_at + HEALTHY_FOR
        released_at = poll(lambda: state(hub, "good")["wave"] == index + 2, interval=0.1)
        next_at = poll(lambda: all(applied(hub, d, "extra") for d in waves[index + 1]))
        print(f"FIGURE wave {index + 1} good -> wave {index + 2} released: {released_at - good_at:.2f} s; "
              f"-> its {len(waves[index + 1])} device(s) report it applied and running: {next_at - good_at:.2f} s")
