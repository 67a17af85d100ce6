"""Bytes of the outputs: TFRecord examples and NPY (`encode`), TFRecord reading without
TensorFlow (`records`), GeoTIFF, PNG/JPEG pictures (`visualize`) and the per-patch files
(`files`). Pure and Beam-free."""
