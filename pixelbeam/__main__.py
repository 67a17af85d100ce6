"""`python -m pixelbeam run CONFIG …` is `pixelbeam run CONFIG …`."""

import sys

from pixelbeam.pipeline.cli import main

sys.exit(main())
