"""The detect stage as its own process: `python -m services.detect --config CONFIG [--instance ID]`."""

import sys

from anonengine.engine.detect import main

if __name__ == "__main__":
    sys.exit(main())
