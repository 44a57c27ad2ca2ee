"""``python -m ganorigin``: the command line (see :mod:`ganorigin.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
