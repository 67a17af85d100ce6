"""pixelbeam's Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in dataflow/Dockerfile):
the template's parameters become `pixelbeam run` (pixelbeam/pipeline/template.py)."""

import sys

from pixelbeam.pipeline.template import main

if __name__ == "__main__":
    sys.exit(main())
