"""The seed's seg script, kept for its users: same flags, now the anonengine pipeline."""

import sys

from anonengine.cli import entry_point

if __name__ == "__main__":
    entry_point(["run", "--method", "seg", *sys.argv[1:]])
