"""A local Ray start succeeds while another Ray on the host holds the dashboard agent's fixed port 52365 (local
clusters take free ports; a start that fails anyway is retried once on new ones). That nothing listens beyond loopback during a 2-worker fit and a sweep is checked in the
process table while they run: tests/faults/test_worker_kill.py and tests/ux/test_sweep_experience.py."""

import socket
import subprocess
import sys

import pytest
from fit_helpers import ROOT

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_local_ray_starts_while_the_agent_port_is_taken(tmp_path):
    """Another local Ray holding 127.0.0.1:52365 (the dashboard agent's fixed port) made starts fail."""
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind(("127.0.0.1", 52365))
        blocker.listen()
    except OSError:  # another process (often another local Ray) holds it already: the very case under test
        blocker.close()
    with socket.socket() as check:  # whoever holds it, the port must be taken while the probe starts Ray
        assert check.connect_ex(("127.0.0.1", 52365)) == 0, "port 52365 could not be taken for the test"
    probe = ("import logging, ray; from pipeline.core import logs; logs.configure('info')\n"
             "from pipeline.core.ray_compat import dashboard_agent_port\n"
             "from pipeline.driver.ray_setup import init_ray\ninit_ray(1, num_cpus=1)\n"
             "print('NODES', len(ray.nodes()), 'AGENT', dashboard_agent_port())")
    try:
        proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        blocker.close()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "NODES 1" in out and "AGENT 52365" not in out
