"""Moving MNIST generated on the fly from the bundled digits (Srivastava et al., 2015).

Each sequence shows `num_digits` MNIST digits (28x28) bouncing inside
`frame_size` x `frame_size` frames: a random start position and direction
per digit, a fixed speed, reflection at the walls, digits overlaid with a
pixel-wise maximum. Sequence i is drawn from its own generator seeded by
(data.dataset_seed, i), so a dataset is reproducible and random-access
without being stored.

Record layout: the shared pipeline batches `{'image': uint8 (H, W, C)}`
records, so a sequence travels as one image with time in the channel axis,
`(frame_size, frame_size, seq_len)`; the ConvLSTM trainer moves time back to
its own axis. The pipeline, preprocessing and checkpointed iterator state
stay untouched.
"""
from __future__ import annotations

import numpy as np

from synthjax.data.sources import SPLITS, DataSource, bundled_split_indices, load_bundled_mnist
from synthjax.errors import UserError

DIGIT_SIZE = 28
STEP_LENGTH = 0.1  # per frame, as a fraction of the free range (frame_size - 28): ~3.6 px at 64x64
DEFAULTS = dict(num_sequences=10000, seq_len=20, frame_size=64, num_digits=2, dataset_seed=0)


def bouncing_trajectory(rng: np.random.Generator, seq_len: int, step: float = STEP_LENGTH) -> np.ndarray:
    """Positions (seq_len, 2) in [0, 1]^2 of a point moving at constant speed and reflecting off the unit box."""
    position = rng.random(2)
    theta = rng.random() * 2.0 * np.pi
    velocity = step * np.array([np.sin(theta), np.cos(theta)])
    path = np.empty((seq_len, 2))
    for t in range(seq_len):
        position = position + velocity
        for axis in range(2):  # reflect: clamp to the wall and reverse that component
            if position[axis] <= 0.0 or position[axis] >= 1.0:
                position[axis] = np.clip(position[axis], 0.0, 1.0)
                velocity[axis] = -velocity[axis]
        path[t] = position
    return path


def moving_digits(digits_nhw: np.ndarray, rng: np.random.Generator, seq_len: int, frame_size: int, num_digits: int) -> np.ndarray:
    """One sequence (seq_len, frame_size, frame_size) uint8 of `num_digits` random digits bouncing."""
    frames = np.zeros((seq_len, frame_size, frame_size), np.uint8)
    free = frame_size - DIGIT_SIZE
    for _ in range(num_digits):
        digit = digits_nhw[rng.integers(len(digits_nhw))]
        corners = np.floor(bouncing_trajectory(rng, seq_len) * free).astype(np.int64)
        for t, (top, left) in enumerate(corners):
            window = frames[t, top : top + DIGIT_SIZE, left : left + DIGIT_SIZE]
            np.maximum(window, digit, out=window)
    return frames


class MovingMNISTRecords:
    """Random-access records `{'image': uint8 (S, S, T), 'label': -1}`, each generated from its index."""

    def __init__(self, digits_nhw: np.ndarray, num_sequences: int, seq_len: int, frame_size: int, num_digits: int, seed: int):
        self.digits = digits_nhw
        self.num_sequences, self.seq_len, self.frame_size = num_sequences, seq_len, frame_size
        self.num_digits, self.seed = num_digits, seed

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((*np.atleast_1d(self.seed).tolist(), int(index)))
        frames = moving_digits(self.digits, rng, self.seq_len, self.frame_size, self.num_digits)
        return {"image": np.ascontiguousarray(frames.transpose(1, 2, 0)), "label": np.int32(-1)}


def moving_mnist_source(data_cfg, split: str = "train") -> DataSource:
    """The `data.name='moving_mnist'` source; optional keys data.{num_sequences, seq_len, frame_size, num_digits, dataset_seed}.

    The 'train' split moves digits of the bundled train split, 'test' those of the bundled
    test split (with its own seed stream), so no test digit appears in training sequences.
    """
    opts = {key: data_cfg.get(key, default) for key, default in DEFAULTS.items()}
    for key in ("num_sequences", "seq_len", "num_digits"):
        if not isinstance(opts[key], int) or opts[key] < 1:
            raise UserError(f"data.{key} must be a positive integer for moving_mnist, got {opts[key]!r}")
    if opts["frame_size"] < DIGIT_SIZE:
        raise UserError(f"data.frame_size={opts['frame_size']} is smaller than an MNIST digit ({DIGIT_SIZE}); use 64 (the standard) or >= 28")
    digits, _ = load_bundled_mnist()
    digits = digits[bundled_split_indices(split)]
    seed = opts["dataset_seed"] if split == "train" else (opts["dataset_seed"], SPLITS.index(split))
    records = MovingMNISTRecords(
        digits[..., 0], opts["num_sequences"], opts["seq_len"], opts["frame_size"], opts["num_digits"], seed
    )
    size = opts["frame_size"]
    return DataSource("moving_mnist", records, (size, size, opts["seq_len"]), 0)
