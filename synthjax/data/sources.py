"""Dataset sources: bundled MNIST, tensorflow-datasets, image folders and .npz files.

Every source is a grain-compatible random-access source (`__len__`,
`__getitem__`) of records `{'image': uint8 (H, W, C), 'label': int32}`; `label`
is -1 where the dataset has none. `DataSource` carries the shape and whether
labels exist, so models can be checked against the data before training.

Held-out protocol: every source has a 'train' and a 'test' split
(`get_source(data_cfg, split)`, default `data.split`). Training reads
`data.split` ('train'); evaluation (eval_step, NLL, FID/KID/PR reference
statistics) reads `data.eval_split` ('test'). The bundled MNIST digits are
split 8,000 train / 2,000 test, stratified by class (`bundled_split_indices`);
an .npz file uses its `test_images`/`test_labels` arrays when it has them;
otherwise .npz files and image folders hold out a deterministic 20%
(`holdout_indices`); tensorflow-datasets use their own splits.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import os
import struct
from typing import Any, Callable

import numpy as np

from synthjax.errors import UserError, unknown_name

OFFLINE_HINT = (
    "offline alternatives: data.name='mnist_bundled' (shipped with synthjax), "
    "data.name='folder' with data.path=DIR of images, or data.name='npz' with data.path=FILE.npz "
    "(key 'images', optional 'labels')"
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "test")
TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A random-access dataset and what it holds."""

    name: str
    records: Any  # supports len() and [int] -> {'image', 'label'}
    image_shape: tuple[int, int, int]
    num_classes: int  # 0 when there are no labels

    @property
    def has_labels(self) -> bool:
        return self.num_classes > 0

    def __len__(self) -> int:
        return len(self.records)


class ArrayRecords:
    """In-memory records from a uint8 image array and an optional label array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        label = -1 if self.labels is None else self.labels[index]
        return {"image": self.images[index], "label": np.int32(label)}


def _read_idx(path) -> np.ndarray:
    """Read a gzipped IDX file (the original MNIST format)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise UserError(f"{path}: IDX type 0x{dtype_code:02x} is not uint8")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test split shipped inside the package: (10000, 28, 28, 1) uint8 and labels."""
    root = importlib.resources.files("synthjax.data") / "mnist"
    images = _read_idx(root / "t10k-images-idx3-ubyte.gz")[..., None]
    labels = _read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int32)
    return images, labels


def _index_hash(index: int) -> bytes:
    """A fixed pseudo-random sort key for an index: sha256 of its 8 little-endian bytes (no RNG library involved)."""
    return hashlib.sha256(int(index).to_bytes(8, "little")).digest()


def _test_counts(class_sizes: np.ndarray, fraction: float) -> np.ndarray:
    """Test images per class: `fraction` of each class, rounded by largest remainder (ties to the lower class)
    so the total is round(fraction * N)."""
    exact = class_sizes * fraction
    counts = np.floor(exact).astype(np.int64)
    missing = int(round(fraction * class_sizes.sum())) - int(counts.sum())
    order = sorted(range(len(exact)), key=lambda c: (-(exact[c] - counts[c]), c))
    counts[order[:missing]] += 1
    return counts


def holdout_indices(labels: np.ndarray | None, num: int, fraction: float = TEST_FRACTION) -> dict[str, np.ndarray]:
    """Deterministic train/test indices of a dataset of `num` items, stratified by class when labelled.

    Within each class (or over all items when `labels` is None) indices are ordered by
    `_index_hash`, and the first `fraction` of them (largest-remainder rounding, so the
    total is round(fraction * num)) are the test split. The result depends only on the
    labels and `num`: the same on every machine and every library version. Both arrays
    are sorted ascending.
    """
    groups = np.zeros(num, np.int64) if labels is None else np.asarray(labels, np.int64)
    classes, sizes = np.unique(groups, return_counts=True)
    test = []
    for cls, count in zip(classes, _test_counts(sizes, fraction)):
        members = np.flatnonzero(groups == cls)
        ranked = sorted(members.tolist(), key=_index_hash)
        test.extend(ranked[:count])
    test = np.sort(np.asarray(test, np.int64))
    train = np.setdiff1d(np.arange(num, dtype=np.int64), test)
    return {"train": train, "test": test}


def bundled_split_indices(split: str) -> np.ndarray:
    """Indices into `load_bundled_mnist()` of the bundled 'train' (8,000) or 'test' (2,000) split.

    A fixed split, stratified by class: 20% of each digit class (largest-remainder rounding)
    chosen by the sha256 of each index. Pinned by tests/test_data.py.
    """
    _check_split(split, "mnist_bundled")
    _, labels = load_bundled_mnist()
    return holdout_indices(labels, len(labels))[split]


def _check_split(split: str, dataset: str) -> None:
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not available for dataset {dataset!r}; valid: {', '.join(SPLITS)} (data.split / data.eval_split)")


def _bundled(cfg, split: str) -> DataSource:
    images, labels = load_bundled_mnist()
    index = bundled_split_indices(split)
    return _array_source("mnist_bundled", images[index], labels[index], num_classes=10)


def _split_arrays(name: str, images: np.ndarray, labels: np.ndarray | None, split: str) -> DataSource:
    """`split` of an unsplit dataset: the deterministic 20% holdout (`holdout_indices`) is 'test'."""
    _check_split(split, name)
    if len(images) == 0:
        raise UserError(f"dataset {name!r} is empty: it holds no images")
    num_classes = _num_classes(labels)
    index = holdout_indices(labels, len(images))[split]
    if len(index) == 0:
        raise UserError(
            f"dataset {name!r} has {len(images)} image(s), too few to hold out a test split "
            f"({TEST_FRACTION:.0%} of them rounds to none); add images, or provide test images explicitly"
        )
    return _array_source(name, images[index], None if labels is None else labels[index], num_classes)


def _num_classes(labels: np.ndarray | None) -> int:
    return 0 if labels is None or len(labels) == 0 else int(labels.max()) + 1


def _array_source(name: str, images: np.ndarray, labels: np.ndarray | None, num_classes: int | None = None) -> DataSource:
    if len(images) == 0:
        raise UserError(f"dataset {name!r} is empty: it holds no images")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"dataset {name!r}: images must be (N, H, W) or (N, H, W, 1|3), got shape {images.shape}")
    num_classes = _num_classes(labels) if num_classes is None else num_classes
    return DataSource(name, ArrayRecords(images, labels), tuple(images.shape[1:]), num_classes)


def _npz(cfg, split: str) -> DataSource:
    """An .npz file: 'images' (+ optional 'labels') is the whole dataset, split by the 20% holdout,
    unless it also holds 'test_images' (+ 'test_labels'): then 'images' is train and those are test."""
    path = _require_path(cfg, "npz")
    _check_split(split, f"npz:{path}")
    arrays = _read_npz(path)
    if "test_images" not in arrays:
        return _split_arrays(f"npz:{path}", arrays["images"], arrays.get("labels"), split)
    prefix = "" if split == "train" else "test_"
    labels = arrays.get(prefix + "labels")
    num_classes = max(_num_classes(arrays.get("labels")), _num_classes(arrays.get("test_labels")))
    return _array_source(f"npz:{path}", arrays[prefix + "images"], labels, num_classes)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The image and label arrays of an .npz file, checked: uint8 images, one integer label per image."""
    try:
        archive = np.load(path)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise UserError(
                f"{path} holds a single array (an .npy file), not an .npz archive; "
                "save with np.savez(path, images=..., labels=...) instead of np.save"
            )
        with archive as f:
            if "images" not in f:
                raise UserError(f"{path}: no array named 'images' (found {sorted(f.keys())}); save with np.savez(path, images=..., labels=...)")
            arrays = {k: f[k] for k in ("images", "labels", "test_images", "test_labels") if k in f}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as an .npz file: {e}") from None
    for prefix in ("", "test_"):
        images, labels = arrays.get(prefix + "images"), arrays.get(prefix + "labels")
        if images is None:
            continue
        if images.dtype != np.uint8:
            raise UserError(f"{path}: '{prefix}images' must be uint8 in [0, 255], got dtype {images.dtype}")
        if labels is not None and len(labels) != len(images):
            raise UserError(f"{path}: {len(labels)} '{prefix}labels' for {len(images)} '{prefix}images'")
        if labels is not None:
            arrays[prefix + "labels"] = checked_labels(labels, f"{path}: '{prefix}labels'")
    return arrays


def checked_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Class labels as int32, refusing negative or non-integer values (classes are 0, 1, ..., K-1)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UserError(f"{where} must be a 1-d array of class indices, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating) or labels.dtype == bool):
        raise UserError(f"{where} must be integer class indices 0..K-1, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{where} must be integer class indices 0..K-1; label {i} is {labels[i].item()!r}; save labels as integers (e.g. labels.astype(np.int64))")
    if len(labels) and labels.min() < 0:
        i = int(np.argmin(labels))
        raise UserError(f"{where} must be class indices 0..K-1; label {i} is {labels[i].item()!r} (negative); renumber the classes from 0")
    return labels.astype(np.int32)


def _folder(cfg, split: str) -> DataSource:
    """Images under data.path; labels from sub-folder names when there are sub-folders; 20% held out as 'test'."""
    root = _require_path(cfg, "folder")
    _check_split(split, f"folder:{root}")
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith(IMAGE_SUFFIXES)
    )
    if not files:
        raise UserError(f"data.path={root!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images, kept = _decode_images(files, cfg.get("skip_bad", False))
    classes = sorted({os.path.relpath(os.path.dirname(f), root) for f in kept})
    labels = None
    if len(classes) > 1:
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[os.path.relpath(os.path.dirname(f), root)] for f in kept], np.int32)
    return _split_arrays(f"folder:{root}", images, labels, split)


def _decode_images(files: list[str], skip_bad: bool) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    arrays, kept, bad = [], [], []
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "P", "I", "I;16") else "RGB"))
        except Exception as e:  # PIL raises many types for broken files
            if not skip_bad:
                raise UserError(f"cannot decode image {path}: {e}; fix or remove it, or set data.skip_bad=True") from None
            bad.append(path)
            continue
        arrays.append(arr if arr.ndim == 3 else arr[..., None])
        kept.append(path)
    if bad:
        print(f"data: skipped {len(bad)} unreadable image(s), first: {bad[0]}")
    if not arrays:
        raise UserError("no readable images left after skipping bad files")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = {}
        for a, p in zip(arrays, kept):
            first.setdefault(a.shape, p)
        detail = "; ".join(f"{s} e.g. {p}" for s, p in list(first.items())[:3])
        raise UserError(f"images in the folder have different sizes ({detail}); resize them to one size first")
    return np.stack(arrays), kept


def _require_path(cfg, kind: str) -> str:
    path = cfg.get("path", "")
    if not path:
        raise UserError(f"data.name={kind!r} needs data.path (e.g. --config.data.path=/path/to/data)")
    if not os.path.exists(path):
        raise UserError(f"data.path={path!r} does not exist")
    return path


class TfdsRecords:
    """Adapts a `tfds.data_source` to `{'image', 'label'}` records, optionally centre-cropped and resized."""

    def __init__(self, source, image_size: int, label_key: str | None):
        self.source, self.image_size, self.label_key = source, image_size, label_key

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[index]
        image = np.asarray(record["image"], np.uint8)
        if self.image_size and image.shape[0] != self.image_size:
            image = center_crop_resize(image, self.image_size)
        label = record[self.label_key] if self.label_key else -1
        return {"image": image, "label": np.int32(label)}


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize with a bilinear filter (celeb_a's 218x178 -> size x size)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top : top + s, left : left + s]
    pil = Image.fromarray(crop.squeeze(-1) if crop.shape[-1] == 1 else crop)
    out = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return out if out.ndim == 3 else out[..., None]


TFDS_DATASETS = {
    # name: (label key or None, native image shape, number of classes)
    "mnist": ("label", (28, 28, 1), 10),
    "fashion_mnist": ("label", (28, 28, 1), 10),
    "cifar10": ("label", (32, 32, 3), 10),
    "celeb_a": (None, (218, 178, 3), 0),
}


def tfds_image_shape(cfg) -> tuple[int, int, int]:
    """The shape a tfds source delivers under `cfg` (data.image_size, or 64x64 for non-square
    images), known without loading the data."""
    shape = TFDS_DATASETS[cfg.name][1]
    size = cfg.get("image_size", 0) or (0 if shape[0] == shape[1] else 64)
    return (size, size, shape[2]) if size else shape


def _tfds(cfg, split: str) -> DataSource:
    """A tensorflow-datasets dataset; `split` is passed to tfds as is ('train', 'test', or e.g. 'train[:90%]')."""
    import tensorflow_datasets as tfds

    name = cfg.name
    label_key, native_shape, num_classes = TFDS_DATASETS[name]
    try:
        source = tfds.data_source(name, split=split, data_dir=cfg.get("tfds_data_dir") or None, download=cfg.get("download", True))
    except Exception as e:  # tfds raises many kinds: network, missing files, format
        raise UserError(
            f"could not load tensorflow-datasets {name!r} split {split!r}: {type(e).__name__}: {e}. "
            f"The data must be downloaded and prepared once, which needs internet and tensorflow "
            f"(`pip install -e '.[tfds-prepare]'`, then `tfds build {name} --file_format=array_record`; "
            f"point data.tfds_data_dir at the result on offline machines); {OFFLINE_HINT}"
        ) from None
    shape = tfds_image_shape(cfg)
    size = shape[0] if shape != native_shape else 0  # 0: no resize
    return DataSource(name, TfdsRecords(source, size, label_key), shape, num_classes)


SOURCES: dict[str, Callable[[Any, str], DataSource]] = {
    "mnist_bundled": _bundled,
    "npz": _npz,
    "folder": _folder,
    # Imported on use: synthjax.data.moving_mnist itself imports this module.
    "moving_mnist": lambda cfg, split: importlib.import_module("synthjax.data.moving_mnist").moving_mnist_source(cfg, split),
    **{name: _tfds for name in TFDS_DATASETS},
}


def get_source(data_cfg, split: str | None = None) -> DataSource:
    """The `split` ('train' or 'test'; None: `data_cfg.split`) of the dataset named by `data_cfg.name`.

    See `SOURCES` for the valid names and the module docstring for how each is split.
    Evaluation passes `data_cfg.eval_split`.
    """
    if data_cfg.name not in SOURCES:
        raise unknown_name("dataset", data_cfg.name, SOURCES, key="data.name")
    split = split or data_cfg.get("split", "train")
    source = SOURCES[data_cfg.name](data_cfg, split)
    _check_image_size(data_cfg, source)
    return source


def _check_image_size(data_cfg, source: DataSource) -> None:
    """Refuse a data.image_size the source does not deliver (only tfds sources are resized), instead of ignoring it."""
    size = data_cfg.get("image_size", 0) or 0
    if size and source.image_shape[:2] != (size, size):
        h, w = source.image_shape[:2]
        raise UserError(
            f"data.image_size={size}, but dataset {source.name!r} holds {h}x{w} images and is not resized "
            f"(only tensorflow-datasets sources are); set data.image_size=0 to use {h}x{w}, or resize the images first"
        )
