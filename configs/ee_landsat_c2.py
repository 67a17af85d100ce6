"""Landsat 8 Collection 2 Level 2 surface reflectance, scaled and QA-masked, as an
ee.ImageCollection (the `source.expression` of configs/ee_landsat_c2_stack.yaml).

Each image's SR_B* bands get the Collection 2 scale factors (DN x 0.0000275 - 0.2) and the
pixels flagged in QA_PIXEL as fill (bit 0), dilated cloud (1), cirrus (2), cloud (3) or cloud
shadow (4) are masked. `addBands(..., None, True)` replaces the bands in place, so each image
keeps its properties (system:time_start, which a stack needs).
"""

import ee

QA_MASKED_BITS = 0b11111  # fill, dilated cloud, cirrus, cloud, cloud shadow


def scale_and_mask(image):
    qa = image.select("QA_PIXEL")
    clear = qa.bitwiseAnd(QA_MASKED_BITS).eq(0)
    optical = image.select("SR_B.").multiply(0.0000275).add(-0.2)
    return image.addBands(optical, None, True).updateMask(clear)


def landsat_c2(start, end, bounds=None, collection="LANDSAT/LC08/C02/T1_L2", max_cloud=100):
    images = (ee.ImageCollection(collection).filterDate(start, end)
              .filter(ee.Filter.lte("CLOUD_COVER", max_cloud)))
    if bounds is not None:
        images = images.filterBounds(ee.Geometry.BBox(*bounds))
    return images.map(scale_and_mask)
