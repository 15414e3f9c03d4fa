"""The seed's bbox script, kept for its users: same flags, now the anonengine pipeline."""

import sys

from anonengine.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--method", "bbox", *sys.argv[1:]]))
