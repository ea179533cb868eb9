"""./launch.sh's demo meets on a free port: deepspeed's default 29500 may be held by another job,
which ended the demo in a raw EADDRINUSE traceback."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port_command(master_port: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"}
    if master_port is not None:
        env["MASTER_PORT"] = master_port
    return subprocess.run(["bash", str(ROOT / "launch.sh"), "free-port"], env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_busy_default_port_is_passed_over():
    with socket.socket() as busy:
        try:
            busy.bind(("", 29500))
            busy.listen()
        except OSError:
            pass  # something else holds it: busy all the same
        proc = free_port_command()
    assert proc.returncode == 0, proc.stderr
    port = int(proc.stdout.strip())
    assert port != 29500
    with socket.socket() as s:
        s.bind(("", port))  # free


def test_a_given_master_port_is_used_or_refused_by_name():
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = free_port_command(str(port))
    assert proc.returncode != 0
    assert f"MASTER_PORT={port} cannot be used (Address already in use)" in proc.stderr
    assert "set MASTER_PORT to another port, or unset it" in proc.stderr
    proc = free_port_command(str(port))  # released now
    assert proc.returncode == 0 and proc.stdout.strip() == str(port), proc.stderr


def test_the_demo_starts_deepspeed_on_that_port():
    script = (ROOT / "launch.sh").read_text()
    demo = script[script.index("\ndemo() {"):]
    demo = demo[:demo.index("\n}\n")]
    assert "port=$(master_port)" in demo
    assert '--master_port "$port"' in demo
