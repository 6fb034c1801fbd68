"""`outpost quickstart` (the README's first command, after the build): a hub and an edge device on this
machine, the sample modules deployed as processes, readings arriving at the hub through the filter, and a twin
change taking effect; SIGINT (Ctrl-C) stops everything and leaves no module running.
"""

from __future__ import annotations

import signal
import subprocess
import time

from harness import outpost_bin, port_open, wait_for


def test_the_quickstart_shows_readings_and_a_twin_change_and_stops_cleanly(tmp_path):
    for host in ("127.0.0.2", "127.0.0.3"):
        assert not port_open(host, 8883), f"{host}:8883 is taken; the quickstart needs it"
    proc = subprocess.Popen([str(outpost_bin()), "quickstart", "--processes", "--data-dir", str(tmp_path / "qs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "reports TemperatureThreshold 25" in line:
                break
        readings = [l for l in lines if l.startswith("reading")]
        assert readings, "\n".join(lines)
        assert all("quickstart-edge/filter" in r for r in readings)
        assert any("reports TemperatureThreshold 25" in l for l in lines), "\n".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    errors = proc.stderr.read()
    assert proc.returncode == 0, errors[-3000:]
    # Only the quickstart's narrative on the terminal; the daemons' logs in its directory.
    assert " INFO " not in errors and not any(" INFO " in l for l in lines), errors[-3000:]
    assert " INFO " in (tmp_path / "qs" / "quickstart.log").read_text()
    wait_for(lambda: not port_open("127.0.0.3", 8883), 10, "the edge hub to stop")
    left = subprocess.run(["pgrep", "-f", str(outpost_bin().with_name("filter"))], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a sample module is still running after Ctrl-C"
