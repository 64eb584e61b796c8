"""Export samples, latent interpolations or reconstructions from a trained run.

    python -m synthjax.sample --workdir runs/dcgan --num 10000 --seed 0 --out samples.npz [--truncation 0.7]
    python -m synthjax.sample --workdir runs/dcgan --mode interpolate --num 8 --steps 10 --out interp.npz
    python -m synthjax.sample --workdir runs/vae_mlp --mode reconstruct --num 32 --out recon.npz

Writes uint8 images (N, H, W, C) under the key `images` from the latest
checkpoint (the EMA generator for GANs), plus a PNG grid next to the .npz.
The same checkpoint and seed always give the same file. `--config.KEY VALUE`
(or `=VALUE`) overrides a field of the run's saved config, e.g.
`--config.data.path` when the data has moved.

- `samples`: `--num` draws from the model. `--truncation T > 0` draws the
  latents from a standard normal truncated to [-T, T] (the truncation trick
  of BigGAN: smaller T, more typical and less varied images).
- `interpolate`: `--num` rows of `--steps` images along the great circle
  (slerp) between two latents drawn as for `samples`; the grid has a row per pair.
- `reconstruct`: the first `--num` images of the test split
  (`data.eval_split`) and their reconstructions (VAE: decode(mu(x))),
  saved as `originals` and `images`; the grid alternates original rows and
  reconstruction rows.
Families without a latent space (e.g. PixelRNN) refuse the latter two with a
one-line error.
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
from synthjax.config import apply_overrides, load_config_dict, split_overrides
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


def load_run(workdir: str, checkpoint: str = "latest", member: str = "", overrides: list[str] | tuple[str, ...] = ()):
    """(config, trainer, state, step) of the latest checkpoint in `workdir`, or of the best one
    (`checkpoint='best'`, kept by train.keep_best); for a stack's workdir, of the run `member`. The run's
    saved config gets `overrides` ('KEY=VALUE') applied."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{workdir!r} is not a synthjax workdir (no config.json); pass the --workdir used for training")
    with open(path) as f:
        config = apply_overrides(load_config_dict(json.load(f)), overrides)
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    # Restore into shapes only: initialising a real state op by op costs seconds.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's: every process restores
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


MODES = ("samples", "interpolate", "reconstruct")


def slerp(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
    """`steps` points from z0 to z1 (each (N, D)) along the great circle, (N, steps, D); linear when they are parallel."""
    t = np.linspace(0.0, 1.0, steps)[None, :, None]
    unit = lambda z: z / np.linalg.norm(z, axis=-1, keepdims=True)  # noqa: E731
    omega = np.arccos(np.clip(np.sum(unit(z0) * unit(z1), -1), -1.0, 1.0))[:, None, None]
    sin = np.sin(omega)
    safe = np.where(sin < 1e-6, 1.0, sin)
    curved = (np.sin((1 - t) * omega) * z0[:, None] + np.sin(t * omega) * z1[:, None]) / safe
    straight = (1 - t) * z0[:, None] + t * z1[:, None]
    return np.where(sin < 1e-6, straight, curved)


def decode_in_batches(trainer, state, z: np.ndarray, labels: np.ndarray | None = None, batch: int = 1000) -> np.ndarray:
    """uint8 images of latents `z` (and, for a class-conditional model, `labels`; None: the classes in turn)."""
    decode = jax.jit(trainer.decode_latents)
    part = lambda a, i: None if a is None else a[i : i + batch]  # noqa: E731
    return np.concatenate([images.to_uint8(np.asarray(decode(state, part(z, i), part(labels, i)))) for i in range(0, len(z), batch)])


def truncated_samples(trainer, state, num: int, seed: int, truncation: float) -> np.ndarray:
    """`num` uint8 images from latents truncated to [-truncation, truncation]."""
    z = np.asarray(trainer.sample_latents(jax.random.key(seed), num, truncation))
    return decode_in_batches(trainer, state, z)


def interpolations(trainer, state, rows: int, steps: int, seed: int, truncation: float = 0.0) -> np.ndarray:
    """(rows * steps) uint8 images: each row walks from one latent to another (slerp); a class-conditional
    model keeps one class per row (row r: class r mod num_labels)."""
    if steps < 2:
        raise UserError(f"--steps must be >= 2 for an interpolation (its two ends), got {steps}")
    k0, k1 = jax.random.split(jax.random.key(seed))
    z0 = np.asarray(trainer.sample_latents(k0, rows, truncation))
    z1 = np.asarray(trainer.sample_latents(k1, rows, truncation))
    path = slerp(z0, z1, steps).astype(np.float32)
    labels = np.repeat(np.arange(rows) % trainer.num_labels, steps).astype(np.int32) if trainer.num_labels else None
    return decode_in_batches(trainer, state, path.reshape(rows * steps, -1), labels)


def reconstructions(config, trainer, state, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions), uint8, of the first `num` images of the held-out split."""
    source = get_source(config.data, config.data.get("eval_split", "test"))
    num = min(num, len(source))
    originals = np.stack([source.records[i]["image"] for i in range(num)])
    x = trainer.preprocess({"image": originals, "label": None}, np.random.default_rng(seed))["image"]
    recon = np.asarray(jax.jit(trainer.reconstruct)(state, x))
    return originals, images.to_uint8(recon)


def interleave_rows(a: np.ndarray, b: np.ndarray, ncol: int) -> np.ndarray:
    """Rows of `ncol` images taken alternately from a and b (originals above their reconstructions)."""
    rows = []
    for i in range(0, len(a), ncol):
        rows += [a[i : i + ncol], b[i : i + ncol]]
    return np.concatenate(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--mode", default="samples", help=f"one of {', '.join(MODES)}")
    p.add_argument("--num", type=int, default=10000, help="samples; interpolation rows; images to reconstruct")
    p.add_argument("--steps", type=int, default=10, help="images per interpolation row")
    p.add_argument("--truncation", type=float, default=0.0, help="truncate latents to [-T, T] (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.npz")
    p.add_argument("--member", default="", help="for a stack's workdir (python -m synthjax.sweep --vmap): the run's name or index")
    p.add_argument("--checkpoint", default="latest", choices=sorted(CHECKPOINTS),
                   help="latest, or best: the one kept by train.keep_best")
    try:
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        p.error(str(e))
    a = p.parse_args(rest)
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    tuning.apply()
    try:
        if a.mode not in MODES:
            raise UserError(f"--mode {a.mode!r} is not one of {', '.join(MODES)}")
        if a.num <= 0:
            raise UserError(f"--num must be positive, got {a.num}")
        if not a.out.endswith(".npz"):
            raise UserError(f"--out {a.out!r} must end in .npz (numpy would write {a.out}.npz); e.g. --out {a.out}.npz")
        if a.truncation < 0:
            raise UserError(f"--truncation must be >= 0 (0: no truncation), got {a.truncation}")
        config, trainer, state, step = load_run(a.workdir, a.checkpoint, a.member, overrides)
        arrays, grid_images, ncol = export(a, config, trainer, state)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    np.savez_compressed(a.out, **arrays)
    grid = os.path.splitext(a.out)[0] + ".png"
    images.save_png(grid, images.make_grid(grid_images, ncol))
    data = arrays["images"]
    print(f"synthjax.sample: {a.mode}: {len(data)} images {data.shape[1:]} from step {step} -> {a.out} (grid {grid})")


def export(a: argparse.Namespace, config, trainer, state) -> tuple[dict, np.ndarray, int | None]:
    """(arrays for the .npz, images for the PNG grid, grid columns) of the requested mode."""
    if a.mode == "interpolate":
        data = interpolations(trainer, state, a.num, a.steps, a.seed, a.truncation)
        return {"images": data}, data[: 16 * a.steps], a.steps
    if a.mode == "reconstruct":
        originals, recon = reconstructions(config, trainer, state, a.num, a.seed)
        ncol = min(8, len(recon))
        return {"images": recon, "originals": originals}, interleave_rows(originals[:64], recon[:64], ncol), ncol
    data = truncated_samples(trainer, state, a.num, a.seed, a.truncation) if a.truncation else generate(trainer, state, a.num, a.seed)
    return {"images": data}, data[:64], None


if __name__ == "__main__":
    main()
