"""k3net against HashiCorp Serf on a simulated LAN (`nox -s versus`).
The code is `k3lab.versus.run` (scripts/lab/k3lab/versus/); `--help` lists the options."""

import sys

from k3lab.versus.run import main

if __name__ == "__main__":
    sys.exit(main())
