"""The seed's seg script, kept for its users: same flags, now the anonengine pipeline."""

import sys

from anonengine.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--method", "seg", *sys.argv[1:]]))
