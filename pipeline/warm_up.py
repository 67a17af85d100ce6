"""The pictures' imports, ahead of the pictures: a local `pixelbeam run` draws preview.png and
footprints.png after the pipeline (pipeline/preview.py), and importing what they need costs more
than drawing them; started with the pipeline, the imports overlap it instead of following it."""

from __future__ import annotations

import threading


def _import_picture_modules() -> None:
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        from matplotlib import font_manager
        from matplotlib.collections import LineCollection, PolyCollection  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
        from matplotlib.lines import Line2D  # noqa: F401
        from matplotlib.patches import Patch  # noqa: F401
        from PIL import Image, ImageDraw, ImageFont  # noqa: F401
        import rasterio.warp  # noqa: F401

        import pixelbeam.pipeline.footprints  # noqa: F401
        font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))  # the default font, loaded
    except Exception:  # noqa: BLE001 - the pictures themselves say what failed
        pass


def warm_up_pictures() -> threading.Thread:
    """Import what the pictures need (matplotlib's Agg figure and default font, Pillow: ~0.7
    CPU-s) in a daemon thread, to start as a local pipeline starts: the imports then overlap the
    pipeline (an Earth Engine job's launcher mostly waits on the server) rather than follow it.
    `preview.write_previews_quietly(..., warm_up=thread)` waits for it. The pictures are the same."""
    thread = threading.Thread(target=_import_picture_modules, name="pixelbeam-pictures-imports", daemon=True)
    thread.start()
    return thread
