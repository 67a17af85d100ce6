"""`tf_dataset`: a written output as a `tf.data.Dataset` (imports TensorFlow when called)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from pixelbeam.transforms.loaders.common import (AUTO, band_features, check_split, label_entry, read_dataset_json,
                                                 tfrecord_files, tfrecord_patch_count)


def tf_dataset(output_path: str, batch_size: Optional[int] = None, with_mask: bool = False,
               label_feature: Union[str, None] = AUTO, label_spec: Optional[dict] = None,
               crop_margin: bool = False, shuffle_buffer: int = 0, seed: Optional[int] = None,
               drop_remainder: bool = False, as_dict: bool = False,
               files: Optional[Sequence[str]] = None, split: Optional[str] = None):
    """A `tf.data.Dataset` over the output's TFRecords, parsed with dataset.json's spec.

    Elements (batched along a leading axis when `batch_size` is given):
      image                  float32 `(H, W, C)`, bands stacked in dataset.json order
      (image, label)         when a label feature is present (see `label_entry`)
      (image, mask)          with `with_mask`: float32 `(H, W)`, 1.0 where every band is valid
      (image, label, mask)   both: Keras reads this as (x, y, sample_weight)
    `as_dict=True` gives `{"image", "label"?, "mask"?, "patch_id"}` instead. `crop_margin`
    drops the `margin` px fetched around each patch. `shuffle_buffer` > 0 shuffles records
    (seeded by `seed`). `split` reads one split's shards (e.g. "train"; config `split:`);
    `files` overrides the shards.
    """
    import tensorflow as tf

    meta = read_dataset_json(output_path)
    check_split(meta, split)
    spec = meta["tfrecord"]["features"]
    bands = band_features(meta)
    label = label_entry(meta, label_feature, label_spec)
    dtypes = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    wanted = list(bands) + (["mask"] if with_mask else []) + (["patch_id"] if as_dict else [])
    features = {k: tf.io.FixedLenFeature(spec[k]["shape"], dtypes[spec[k]["dtype"]]) for k in wanted}
    if label:
        features[label[0]] = tf.io.FixedLenFeature(label[1]["shape"], dtypes[label[1]["dtype"]])
    m = int(meta.get("margin", 0)) if crop_margin else 0

    def crop(x, channels_last):
        if not m:
            return x
        return x[..., m:-m, m:-m, :] if channels_last else x[..., m:-m, m:-m]

    def to_element(parsed):
        image = crop(tf.stack([parsed[b] for b in bands], axis=-1), True)
        out = {"image": image}
        if label:
            out["label"] = parsed[label[0]]
        if with_mask:
            out["mask"] = crop(parsed["mask"], False)
        if as_dict:
            out["patch_id"] = parsed["patch_id"]
            return out
        values = tuple(out.values())
        return values[0] if len(values) == 1 else values

    count = None
    if files is None:
        files = tfrecord_files(output_path, meta, split)
        count = tfrecord_patch_count(output_path, split)
    compression = meta["tfrecord"].get("compression", "GZIP")
    ds = tf.data.TFRecordDataset(list(files), compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE)
    if count is not None:  # a known length: len(ds) works and Keras knows where an epoch ends
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(lambda raw: to_element(tf.io.parse_example(raw, features)), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda raw: to_element(tf.io.parse_single_example(raw, features)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
