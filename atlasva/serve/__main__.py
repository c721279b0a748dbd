"""``python -m atlasva.serve …`` — the same as ``atlasva serve …``."""

import sys

from atlasva.serve.server import serve_main

raise SystemExit(serve_main(sys.argv[1:]))
