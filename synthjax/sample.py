"""Export samples from a trained run.

    python -m synthjax.sample --workdir runs/dcgan --num 10000 --seed 0 --out samples.npz [--config.KEY VALUE ...]

Writes uint8 images (N, H, W, C) under the key `images` from the latest
checkpoint (the EMA generator for GANs), plus a PNG grid of the first 64 next
to the .npz. The same checkpoint and seed always give the same file.
`--config.KEY VALUE` (or `=VALUE`) overrides a field of the run's saved
config, e.g. `--config.data.path` when the data has moved.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np
from absl import logging

from synthjax import images, tuning
from synthjax.checkpoint import Checkpointer
from synthjax.config import apply_overrides, load_config_dict, split_overrides
from synthjax.data import get_source
from synthjax.errors import UserError
from synthjax.trainers import build_trainer


def load_run(workdir: str, overrides: list[str] | tuple[str, ...] = ()):
    """(config, trainer, state, step) of the latest checkpoint in `workdir`, its saved config with `overrides` applied."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{workdir!r} is not a synthjax workdir (no config.json); pass the --workdir used for training")
    with open(path) as f:
        config = apply_overrides(load_config_dict(json.load(f)), overrides)
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    # Restore into shapes only: initialising a real state op by op costs seconds.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(trainer.create_state, jax.random.key(0))
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
    restored = Checkpointer(workdir, keep=config.train.keep).restore(target)
    if restored is None:
        raise UserError(f"no checkpoint in {workdir!r}; train first with python train.py --workdir {workdir}")
    state, _, step = restored
    return config, trainer, state, step


def generate(trainer, state, num: int, seed: int, batch: int = 1000) -> np.ndarray:
    """`num` uint8 images, drawn in fixed-size batches so memory stays bounded and results are seed-determined."""
    sample = jax.jit(trainer.sample, static_argnums=2)
    key = jax.random.key(seed)
    chunks = [images.to_uint8(np.asarray(sample(state, jax.random.fold_in(key, i), batch))) for i in range(-(-num // batch))]
    return np.concatenate(chunks)[:num]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.npz")
    try:
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        p.error(str(e))
    a = p.parse_args(rest)
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    tuning.apply()
    try:
        if a.num <= 0:
            raise UserError(f"--num must be positive, got {a.num}")
        _, trainer, state, step = load_run(a.workdir, overrides)
        data = generate(trainer, state, a.num, a.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    np.savez_compressed(a.out, images=data)
    grid = os.path.splitext(a.out)[0] + ".png"
    images.save_png(grid, images.make_grid(data[:64]))
    print(f"synthjax.sample: {len(data)} images {data.shape[1:]} from step {step} -> {a.out} (grid {grid})")


if __name__ == "__main__":
    main()
