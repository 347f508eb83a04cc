"""``python -m pipeline.core.backbones NAME``: resolve (and cache) a backbone, print its folder."""

import sys

from pipeline.core.backbones.resolve import main

sys.exit(main())
