"""Train a synthjax model.

    python train.py --config configs/dcgan.py --workdir runs/dcgan [--config.opt.lr=1e-4 ...]
    python train.py --config configs/vae_mlp.py:smoke --workdir /tmp/vae

Rerunning with the same --workdir resumes from its latest checkpoint. For
several hosts, start one process per host with --coordinator_address,
--num_processes and --process_id (or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables, or on TPU pods and
SLURM nothing but --distributed); see docs/scaling.md.

Mistakes in the input (a config value, a path, a dataset) end with exit
status 2 and one line `error: ...` on stderr; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

from absl import app, flags, logging

flags.DEFINE_string(
    "config", None, "Experiment config file, e.g. configs/dcgan.py[:smoke]. Override any field with --config.KEY=VALUE."
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples; rerun with the same one to resume.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "Index of this process in a multi-host run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detected settings (TPU pods, SLURM).")
FLAGS = flags.FLAGS
OVERRIDE_PREFIX = "--config."
_overrides: list[str] = []


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take `--config.KEY=VALUE` (or `--config.KEY VALUE`) out of argv as 'KEY=VALUE'; absl parses the rest."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            key, eq, value = arg[len(OVERRIDE_PREFIX) :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    fail(f"{arg} needs a value, e.g. {arg}=VALUE")
                i, value = i + 1, argv[i + 1]
            overrides.append(f"{key}={value}")
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors instead of usage dumps."""
    rest, _overrides[:] = split_overrides(argv)
    try:
        remaining = FLAGS(rest)
    except flags.Error as e:
        fail(f"{e} (see --helpfull)")
    missing = [name for name in ("config", "workdir") if not FLAGS[name].value]
    if missing:
        fail(f"missing {', '.join('--' + m for m in missing)}; e.g. python train.py --config configs/dcgan.py:smoke --workdir /tmp/dcgan")
    return remaining


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        fail(f"environment variable {name}={value!r} must be an integer")


def init_distributed() -> None:
    """Join a multi-process run when coordinator settings are given (flags, env, or --distributed auto-detection)."""
    import jax

    address = FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (address or FLAGS.distributed):
        return
    num = FLAGS.num_processes if FLAGS.num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = FLAGS.process_id if FLAGS.process_id is not None else _env_int("JAX_PROCESS_ID")
    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    except (ValueError, TypeError) as e:  # jax's checks of the settings, e.g. process_id >= num_processes
        fail(f"cannot join the multi-host run ({e}); set --coordinator_address, --num_processes and --process_id")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; config overrides look like --config.opt.lr=1e-4")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    init_distributed()

    from synthjax import tuning
    from synthjax.config import load_config
    from synthjax.errors import UserError
    from synthjax.train import train_and_evaluate

    try:
        config = load_config(FLAGS.config, _overrides)
        tuning.apply(config.train.cpu_allocator)  # process-level CPU tuning, before jax starts its backend
        train_and_evaluate(config, FLAGS.workdir)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume from the last checkpoint in {FLAGS.workdir}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
