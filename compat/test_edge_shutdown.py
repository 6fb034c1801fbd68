"""`outpost edge run` on SIGTERM (`systemctl stop`): the process modules it started stop with it (SIGTERM, then
SIGKILL after a grace period), and the next start adopts the deployment and runs them again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import uuid
from pathlib import Path

from edge_harness import Edge, deployment, wait_reported
from harness import wait_for

SLEEPER = textwrap.dedent("""\
    # Records its pid and sleeps; ignores nothing, so SIGTERM ends it.
    import os, sys, time
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    while True:
        time.sleep(1)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running: it only waits for its parent to reap it.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_sigterm_stops_process_modules_and_a_restart_runs_them_again(hub, tmp_path, loopback):
    edge = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next())
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    pid_file = tmp_path / "sleeper.pid"
    module = {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
              "startupOrder": 0, "settings": {"path": sys.executable, "args": [str(script), str(pid_file)]}}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(deployment({"sleeper": module})))
    hub.run_cli(["deploy", edge.device_id, str(manifest)])
    try:
        edge.start()
        wait_for(pid_file.exists, 60, "the process module to start")
        first = int(pid_file.read_text())
        assert alive(first)

        edge.proc.send_signal(signal.SIGTERM)
        edge.proc.wait(30)
        assert not alive(first), f"process module {first} still running after SIGTERM to the edge daemon"

        pid_file.unlink()
        edge.start()
        wait_for(pid_file.exists, 60, "the process module to run again after the restart")
        second = int(pid_file.read_text())
        assert second != first and alive(second)
        wait_reported(hub, edge.device_id,
                      lambda r: ((r.get("modules") or {}).get("sleeper") or {}).get("runtimeStatus") == "running",
                      60, "sleeper reported running after the restart")
    finally:
        edge.cleanup()
