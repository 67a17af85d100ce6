"""Training samples of a written output, as numpy arrays: every layer, the mask, the label, the split.

Framework-free (numpy only); the PyTorch datasets and `tf_dataset` build on it. A sample is a
dict with TorchGeo's key names where they exist:

- `image`: float32 `(C, H, W)` (`(T, C, H, W)` for a time stack), the input layers' bands
  stacked along C in dataset order (so they must share their other axes);
- `mask`: float32 `(H, W)`, 1.0 where every input layer is valid (from the TFRecords, or from
  `npy/.../<patch_id>.mask.npy` written with `mask.npy: true`; absent when neither holds it).
  It is the inputs' validity, not TorchGeo's segmentation `mask`: targets are under `target`;
- `target`: the target layers stacked along C; integer targets as int64 (a one-band target is
  `(H, W)`, as CrossEntropyLoss takes it), others float32; absent without target layers;
- `label`: the patch's region label (`sample.label_property`), when the output has labels;
- `patch_id`, and `split` (the manifest's `split`) when the output was split.

`layer_table(meta)` describes the layers of any output: those dataset.json lists (`layers:`
jobs), or the one layer `image` of a `source:` job, whose files keep their old layout.
`normalize` uses dataset.json `stats[<split>][<layer>][<band>]` (mean, std): the train split's
when there is one, else `all`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from pixelbeam.transforms.loaders.common import join_path, load_npy, read_manifest_rows, to_chw

INPUT, TARGET = "input", "target"


def layer_table(meta: dict) -> list[dict]:
    """[{name, role, bands, dtype, npy, mask_npy, band_features, mask_feature}] of an output's layers."""
    spec = meta["tfrecord"]["features"]
    if "layers" not in meta:  # a `source:` job: one input layer, `image`, in the old layout
        return [{"name": "image", "role": INPUT, "bands": list(meta["bands"]), "dtype": meta.get("dtype", "float32"),
                 "npy": "npy/{patch_id}.npy", "mask_npy": "npy/{patch_id}.mask.npy",
                 "band_features": [k for k, v in spec.items() if v.get("role") == "band"], "mask_feature": "mask"}]
    out = []
    for layer in meta["layers"]:
        npy = layer.get("files", {}).get("npy", f"npy/{layer['name']}/{{patch_id}}.npy")
        out.append({"name": layer["name"], "role": layer["role"], "bands": list(layer["bands"]), "dtype": layer["dtype"],
                    "npy": npy, "mask_npy": npy[:-len(".npy")] + ".mask.npy",
                    "band_features": [k for k, v in spec.items() if v.get("role") == "band"
                                      and v.get("layer") == layer["name"]],
                    "mask_feature": f"{layer['name']}/mask"})
    return out


def select_layers(meta: dict, layers: Optional[Sequence[str]] = None) -> list[dict]:
    """The layers a loader returns: all of them, or those named (ValueError for unknown names)."""
    table = layer_table(meta)
    if layers is None:
        return table
    known = {layer["name"]: layer for layer in table}
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ValueError(f"layers: {unknown[0]!r} is not a layer of this output; its layers: {', '.join(known)}")
    return [known[name] for name in layers]


def written_rows(output_path: str, split: Optional[str] = None) -> list[dict]:
    """The manifest rows of written patches (sorted by patch id), of one `split` if given."""
    rows = [r for r in read_manifest_rows(output_path) if r.get("status") == "written"]
    if split is not None:
        splits = sorted({r["split"] for r in rows if r.get("split") is not None})
        if not splits:
            raise ValueError(f"split={split!r}: the manifest has no split field; the output was not split")
        if split not in splits:
            raise ValueError(f"split={split!r} is not a split of this output; its splits: {', '.join(splits)}")
        rows = [r for r in rows if r.get("split") == split]
    return sorted(rows, key=lambda r: r["patch_id"])


def normalization(meta: dict, layers: Sequence[dict], which: Union[bool, str] = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 per image channel from dataset.json `stats` (module doc); std 0 becomes 1."""
    stats = meta.get("stats")
    if not stats:
        raise ValueError("normalize: dataset.json has no stats; write them with the job's stats option, or pass "
                         "normalize=False")
    key = which if isinstance(which, str) else ("train" if "train" in stats else "all")
    if key not in stats:
        raise ValueError(f"normalize={which!r}: dataset.json has stats of {', '.join(stats)}")
    means, stds = [], []
    for layer in layers:
        if layer["role"] != INPUT:
            continue
        for band in layer["bands"]:
            try:
                entry = stats[key][layer["name"]][band]
            except KeyError:
                raise ValueError(f"normalize: dataset.json stats[{key!r}] have no {layer['name']}/{band}") from None
            means.append(entry["mean"])
            stds.append(entry["std"] or 1.0)
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def assemble(arrays: dict, masks: dict, layers: Sequence[dict], norm=None) -> dict:
    """{image, mask?, target?} from each layer's `(C, H, W)` (or `(T, C, H, W)`) array and mask."""
    sample = {}
    inputs = [layer for layer in layers if layer["role"] == INPUT]
    targets = [layer for layer in layers if layer["role"] == TARGET]
    if inputs:
        image = np.concatenate([np.asarray(arrays[l["name"]], np.float32) for l in inputs], axis=-3)
        if norm is not None:
            mean, std = norm
            image = (image - mean[:, None, None]) / std[:, None, None]
        sample["image"] = np.ascontiguousarray(image, dtype=np.float32)
        if all(l["name"] in masks for l in inputs):
            valid = [np.asarray(masks[l["name"]]).reshape((-1,) + image.shape[-2:]).all(axis=0) for l in inputs]
            sample["mask"] = np.logical_and.reduce(valid).astype(np.float32)
    if targets:
        integer = all(np.dtype(l["dtype"]).kind in "biu" for l in targets)
        target = np.concatenate([np.asarray(arrays[l["name"]]) for l in targets], axis=-3)
        target = target.astype(np.int64 if integer else np.float32)
        sample["target"] = target[..., 0, :, :] if target.shape[-3] == 1 else target
    return sample


def npy_sample(output_path: str, row: dict, layers: Sequence[dict], bands_axis: int = 0, norm=None) -> dict:
    """The sample of one manifest row read from its NPY files (and mask files, when listed)."""
    pid, files = row["patch_id"], set(row.get("files") or ())
    arrays, masks = {}, {}
    for layer in layers:
        path = layer["npy"].format(patch_id=pid)
        if path not in files:
            raise FileNotFoundError(f"{output_path}: patch {pid} has no {path}; was the job run with output.formats "
                                    "including npy?")
        arrays[layer["name"]] = to_chw(load_npy(join_path(output_path, path)), bands_axis)
        mask_path = layer["mask_npy"].format(patch_id=pid)
        if mask_path in files:
            masks[layer["name"]] = load_npy(join_path(output_path, mask_path)) > 0
    return {**assemble(arrays, masks, layers, norm), **row_keys(row)}


def example_sample(example: dict, layers: Sequence[dict], meta: dict, norm=None) -> dict:
    """The sample of one record parsed by `pixelbeam.transforms.formats.records.parse_example`;
    a target's values are cast back to its dtype (exact: TFRecords hold them as float32)."""
    spec = meta["tfrecord"]["features"]
    arrays, masks = {}, {}
    for layer in layers:
        names = layer["band_features"]
        h, w = spec[names[0]]["shape"]
        planes = np.stack([np.asarray(example[b], np.float32).reshape(h, w) for b in names])
        steps = len(names) // len(layer["bands"])
        planes = planes.reshape((steps, len(layer["bands"]), h, w)) if steps > 1 else planes
        arrays[layer["name"]] = planes if layer["role"] == INPUT else planes.astype(layer["dtype"])
        mask = example.get(layer["mask_feature"])
        if mask is None:  # a time stack: one mask per step
            steps_masks = [example[k] for k in sorted(example) if k.startswith(layer["mask_feature"].rsplit("mask", 1)[0])
                           and k.endswith("_mask")]
            mask = np.stack([np.asarray(m).reshape(h, w) for m in steps_masks]) if steps_masks else None
        if mask is not None:
            masks[layer["name"]] = np.asarray(mask).reshape((-1, h, w)) > 0.5
    sample = assemble(arrays, masks, layers, norm)
    sample["patch_id"] = example["patch_id"][0].decode("utf-8")
    if "label" in example:
        value = example["label"]
        sample["label"] = value[0].decode("utf-8") if isinstance(value, list) else value.reshape(-1)[0].item()
    return sample


def row_keys(row: dict) -> dict:
    """`patch_id`, and `label` and `split` where the manifest row has them."""
    out = {"patch_id": row["patch_id"]}
    for key in ("label", "split"):
        if row.get(key) is not None:
            out[key] = row[key]
    return out
