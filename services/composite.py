"""The composite stage as its own process: `python -m services.composite --config CONFIG [--instance ID]`."""

import sys

from anonengine.engine.composite import main

if __name__ == "__main__":
    sys.exit(main())
