"""Export samples from a trained run.

    python -m synthjax.sample --workdir runs/dcgan --num 10000 --seed 0 --out samples.npz

Writes uint8 images (N, H, W, C) under the key `images` from the latest
checkpoint (the EMA generator for GANs), plus a PNG grid of the first 64 next
to the .npz. The same checkpoint and seed always give the same file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from synthjax import images, tuning
from synthjax.checkpoint import Checkpointer
from synthjax.config import load_config_dict
from synthjax.data import get_source
from synthjax.errors import UserError
from synthjax.stack import StackState
from synthjax.trainers import build_trainer


CHECKPOINTS = {"latest": "checkpoints", "best": "checkpoints.best"}


def stack_members(workdir: str) -> list[str] | None:
    """The member names of a stack's workdir (its members.json), None for a single run."""
    path = os.path.join(workdir, "members.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return [m["name"] for m in json.load(f)["members"]]


def member_index(members: list[str], member: str, workdir: str) -> int:
    """The index of `member` (a name from members.json or an index) in a stack."""
    if member in members:
        return members.index(member)
    if member.isdigit() and int(member) < len(members):
        return int(member)
    raise UserError(f"{workdir!r} holds a stack of {len(members)} runs; pass --member with one of: {', '.join(members)} "
                    f"(or an index 0..{len(members) - 1}); got {member!r}")


def load_run(workdir: str, checkpoint: str = "latest", member: str = ""):
    """(config, trainer, state, step) of the latest checkpoint in `workdir`, or of the best one
    (`checkpoint='best'`, kept by train.keep_best); for a stack's workdir, of the run `member`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{workdir!r} is not a synthjax workdir (no config.json); pass the --workdir used for training")
    with open(path) as f:
        config = load_config_dict(json.load(f))
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    # Restore into shapes only: initialising a real state op by op costs seconds.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(trainer.create_state, jax.random.key(0))
    members = stack_members(workdir)
    if members:
        index = member_index(members, member, workdir)
        per_member = jax.tree.map(lambda s: jax.ShapeDtypeStruct((len(members), *s.shape), s.dtype), shapes)
        shapes = StackState(per_member, jax.ShapeDtypeStruct((len(members),), jnp.int32))
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINTS)}")
    restored = Checkpointer(workdir, keep=config.train.keep, name=CHECKPOINTS[checkpoint]).restore(target)
    if restored is None and checkpoint == "best":
        raise UserError(f"no best checkpoint in {workdir!r}; train with --config.train.keep_best=METRIC and eval.every > 0 "
                        "(or --config.train.eval_every), or use --checkpoint latest")
    if restored is None:
        raise UserError(f"no checkpoint in {workdir!r}; train first with python train.py --workdir {workdir}")
    state, _, step = restored
    if members:
        state = jax.tree.map(lambda x: x[index], state.members)
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
    p.add_argument("--member", default="", help="for a stack's workdir (python -m synthjax.sweep --vmap): the run's name or index")
    p.add_argument("--checkpoint", default="latest", choices=sorted(CHECKPOINTS),
                   help="latest, or best: the one kept by train.keep_best")
    a = p.parse_args(argv)
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    tuning.apply()
    try:
        if a.num <= 0:
            raise UserError(f"--num must be positive, got {a.num}")
        _, trainer, state, step = load_run(a.workdir, a.checkpoint, a.member)
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
