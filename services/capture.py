"""The capture stage as its own process: `python -m services.capture --config CONFIG [--instance ID]`."""

import sys

from anonengine.engine.capture import main

if __name__ == "__main__":
    sys.exit(main())
