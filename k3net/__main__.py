import sys

from k3net.cli import main

sys.exit(main())
