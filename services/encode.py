"""The encode stage as its own process: `python -m services.encode --config CONFIG [--instance ID]`."""

import sys

from anonengine.engine.encode import main

if __name__ == "__main__":
    sys.exit(main())
