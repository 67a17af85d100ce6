"""Pixel sources behind one small interface (`base.PixelSource` / `PixelReader`): raster files
through rasterio, Earth Engine getPixels/computePixels, and the stacked windows of point
tables. Beam-free."""
