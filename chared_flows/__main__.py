"""`python -m chared_flows ...` is the `chared` command."""

import sys

from chared_flows.cli import main

if __name__ == "__main__":
    sys.exit(main())
