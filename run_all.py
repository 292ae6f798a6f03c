#!/usr/bin/env python
"""Compare credit-assignment methods for recurrent networks. See README.md, or run with --help."""
import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
