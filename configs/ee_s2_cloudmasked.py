"""Sentinel-2 SR cloud-masked median + NDVI + ESA WorldCover label, as one ee.Image.

The `source.expression` of configs/ee_s2_cloudmasked.yaml: pixelbeam runs `s2_cloudmasked`
on the launcher after Earth Engine is initialized, with `source.expression_args` as keyword
arguments and `bounds` (the job's lon/lat extent). As in Google's "People, Planet and AI"
land-cover sample, the label band comes from another dataset on the same patch.
"""

import ee

WORLDCOVER_CLASSES = [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]  # ESA WorldCover v200 "Map"
SCL_MASKED = [3, 8, 9, 10]  # Sentinel-2 scene classes: cloud shadow, cloud medium/high probability, cirrus


def mask_clouds_qa60(image):
    """Opaque clouds (QA60 bit 10) and cirrus (bit 11) masked."""
    qa = image.select("QA60")
    clear = qa.bitwiseAnd(1 << 10).eq(0).And(qa.bitwiseAnd(1 << 11).eq(0))
    return image.updateMask(clear)


def mask_clouds_scl(image):
    """Cloud shadows, clouds and cirrus of the scene classification (SCL) masked."""
    scl = image.select("SCL")
    clear = scl.neq(SCL_MASKED[0])
    for value in SCL_MASKED[1:]:
        clear = clear.And(scl.neq(value))
    return image.updateMask(clear)


def s2_cloudmasked(start, end, bounds=None, max_cloud=70, cloud_mask="qa60"):
    """Bands B2, B3, B4, B8 (median of the cloud-masked images), NDVI and landcover (0..10)."""
    s2 = (ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED").filterDate(start, end)
          .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", max_cloud)))
    if bounds is not None:
        s2 = s2.filterBounds(ee.Geometry.BBox(*bounds))
    mask = {"qa60": mask_clouds_qa60, "scl": mask_clouds_scl}[cloud_mask]
    composite = s2.map(mask).select(["B2", "B3", "B4", "B8"]).median()
    ndvi = composite.normalizedDifference(["B8", "B4"]).rename("NDVI")
    worldcover = ee.ImageCollection("ESA/WorldCover/v200").first().select("Map")
    landcover = worldcover.remap(WORLDCOVER_CLASSES, list(range(len(WORLDCOVER_CLASSES)))).rename("landcover")
    return composite.addBands(ndvi).addBands(landcover)
