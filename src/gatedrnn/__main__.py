"""``python -m gatedrnn``: the ``gatedrnn`` command."""

from gatedrnn.cli import main

if __name__ == "__main__":
    main()
