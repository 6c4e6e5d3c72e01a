"""``python -m agatax``: the command line (see agatax.cli)."""

import sys

from agatax.cli import main

if __name__ == "__main__":
    sys.exit(main())
