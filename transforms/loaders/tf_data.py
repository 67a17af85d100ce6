"""`tf_dataset`: a written output as a `tf.data.Dataset` (imports TensorFlow when called)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from pixelbeam.transforms.loaders.common import (AUTO, band_features, check_split, label_entry, read_dataset_json,
                                                 tfrecord_files, tfrecord_patch_count)
from pixelbeam.transforms.loaders.samples import INPUT, TARGET, normalization, select_layers, written_rows


def tf_dataset(output_path: str, batch_size: Optional[int] = None, with_mask: bool = False,
               label_feature: Union[str, None] = AUTO, label_spec: Optional[dict] = None,
               crop_margin: bool = False, shuffle_buffer: int = 0, seed: Optional[int] = None,
               drop_remainder: bool = False, as_dict: bool = False,
               files: Optional[Sequence[str]] = None, split: Optional[str] = None,
               normalize: Union[bool, str] = False, layers: Optional[Sequence[str]] = None):
    """A `tf.data.Dataset` over the output's TFRecords, parsed with dataset.json's spec.

    Elements (batched along a leading axis when `batch_size` is given), for one source:
      image                  float32 `(H, W, C)`, bands stacked in dataset.json order
      (image, label)         when a label feature is present (see `label_entry`)
      (image, mask)          with `with_mask`: float32 `(H, W)`, 1.0 where every band is valid
      (image, label, mask)   both: Keras reads this as (x, y, sample_weight)
    for an output of several layers (`layers:`), by role:
      (inputs, targets)      inputs float32 `(H, W, C)` (the input layers' bands), targets the
                             target layers': int64 `(H, W)` for one integer band, else `(H, W, C)`
      (inputs, targets, mask) with `with_mask`: the inputs' validity, as Keras' sample_weight
    `as_dict=True` gives `{"image", "target"?, "label"?, "mask"?, "patch_id"}` instead.
    `crop_margin` drops the `margin` px fetched around each patch. `shuffle_buffer` > 0 shuffles
    records (seeded by `seed`). `files` overrides the shards; `split` reads one split's shards (the manifest's `split`); `normalize` standardizes the image with dataset.json's stats
    (see `pixelbeam.transforms.loaders.samples.normalization`); `layers` picks layers.
    """
    import tensorflow as tf

    meta = read_dataset_json(output_path)
    check_split(meta, split)
    spec = meta["tfrecord"]["features"]
    table = select_layers(meta, layers)
    layered = "layers" in meta
    inputs = [f for layer in table if layer["role"] == INPUT for f in layer["band_features"]]
    targets = [layer for layer in table if layer["role"] == TARGET]
    masks = [layer["mask_feature"] for layer in table if layer["role"] == INPUT]
    if not layered:
        inputs, masks = band_features(meta), ["mask"]
    label = label_entry(meta, label_feature, label_spec)
    dtypes = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    wanted = (list(inputs) + [f for layer in targets for f in layer["band_features"]]
              + (masks if with_mask else []) + (["patch_id"] if as_dict or split else []))
    features = {k: tf.io.FixedLenFeature(spec[k]["shape"], dtypes[spec[k]["dtype"]]) for k in wanted}
    if label:
        features[label[0]] = tf.io.FixedLenFeature(label[1]["shape"], dtypes[label[1]["dtype"]])
    m = int(meta.get("margin", 0)) if crop_margin else 0
    norm = normalization(meta, table, normalize) if normalize else None

    def crop(x, channels_last):
        if not m:
            return x
        return x[..., m:-m, m:-m, :] if channels_last else x[..., m:-m, m:-m]

    def to_element(parsed):
        image = crop(tf.stack([parsed[b] for b in inputs], axis=-1), True)
        if norm is not None:
            image = (image - norm[0]) / norm[1]
        out = {"image": image}
        if targets:
            out["target"] = crop(target_of(tf, parsed, targets), True)
            if out["target"].shape[-1] == 1:
                out["target"] = out["target"][..., 0]
        if label:
            out["label"] = parsed[label[0]]
        if with_mask:
            valid = tf.reduce_min(tf.stack([parsed[k] for k in masks], axis=-1), axis=-1)
            out["mask"] = crop(valid, False)
        if as_dict:
            out["patch_id"] = parsed["patch_id"]
            return out
        if layered:
            values = (out["image"], out["target"]) if targets else (out["image"],)
            values += (out["mask"],) if with_mask else ()
        else:
            values = tuple(out.values())
        return values[0] if len(values) == 1 else values

    count = None
    if files is None:
        files = tfrecord_files(output_path, meta, split)
        count = tfrecord_patch_count(output_path, split)
    compression = meta["tfrecord"].get("compression", "GZIP")
    ds = tf.data.TFRecordDataset(list(files), compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE)
    if split is not None:  # parse one by one to keep the split's patch ids, then batch
        ids = tf.constant(sorted(r["patch_id"] for r in written_rows(output_path, split)))
        keep = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(ids, tf.ones_like(ids, tf.int32)), 0)
        ds = ds.map(lambda raw: tf.io.parse_single_example(raw, features), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.filter(lambda parsed: keep.lookup(parsed["patch_id"]) > 0).map(to_element)
    if count is not None:  # a known length: len(ds) works and Keras knows where an epoch ends
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if split is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder) if batch_size else ds
    elif batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(lambda raw: to_element(tf.io.parse_example(raw, features)), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda raw: to_element(tf.io.parse_single_example(raw, features)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def target_of(tf, parsed, targets):
    """The target layers' bands stacked channels-last, cast back to int64 when every one is an integer."""
    import numpy as np
    planes = tf.stack([parsed[f] for layer in targets for f in layer["band_features"]], axis=-1)
    if all(np.dtype(layer["dtype"]).kind in "biu" for layer in targets):
        return tf.cast(tf.round(planes), tf.int64)
    return planes
