"""``python -m zoomtoken``: the same command line as ``zoomtoken``."""

from ._cli import main

if __name__ == "__main__":
    main()
