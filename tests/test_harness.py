"""The test and simulation harness (k3net.harness): what it builds is what it claims."""

from __future__ import annotations

import subprocess
import sys


def test_agent_never_imports_the_harness() -> None:
    # The harness runs `ip netns`, etcd and MariaDB: none of it belongs in an installed agent.
    code = ("import sys, k3net.agent, k3net.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('k3net.harness')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
