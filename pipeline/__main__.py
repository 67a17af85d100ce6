"""`python -m pipeline run CONFIG …` is `pixelbeam run CONFIG …`."""

import sys

from pipeline.cli import main

sys.exit(main())
