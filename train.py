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
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/dcgan.py[:smoke]. Override any field with --config.KEY=VALUE "
    "or --config.KEY VALUE.", lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples; rerun with the same one to resume.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "Index of this process in a multi-host run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detected settings (TPU pods, SLURM).")
FLAGS = flags.FLAGS


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl + ml_collections config_flags parsing, with one-line errors instead of usage dumps."""
    try:
        remaining = FLAGS(argv)
        missing = [name for name in ("config", "workdir") if FLAGS[name].value is None]
        if not missing:
            FLAGS.config.lock()  # config_flags defers a failed load of the file to the first use; this is it
    except Exception as e:  # noqa: BLE001  (config_flags raises several types; each becomes one line below)
        fail(describe_flag_error(argv, e))
    if missing:
        fail(f"missing {', '.join('--' + m for m in missing)}; e.g. python train.py --config configs/dcgan.py:smoke --workdir /tmp/dcgan")
    return remaining


def describe_flag_error(argv: list[str], error: Exception) -> str:
    """One line for a failed flag parse. A config or override mistake is re-diagnosed by synthjax.config's own
    loader, whose messages name the key, its type and the closest valid keys ("did you mean")."""
    from synthjax.config import load_config
    from synthjax.errors import UserError

    if isinstance(error, UserError):
        return str(error)
    try:
        rest, overrides = split_config_args(argv)
        if "config" in rest:
            load_config(rest["config"], overrides)
    except UserError as e:
        return str(e)
    return " ".join(str(error).split()) + " (see --helpfull)"


def split_config_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """({'config': PATH} when given, the 'KEY=VALUE' overrides) out of argv, through the shared override parser."""
    from synthjax.config import split_overrides

    rest, overrides = split_overrides(argv[1:])
    found = {}
    for i, arg in enumerate(rest):
        if arg.startswith("--config="):
            found["config"] = arg.partition("=")[2]
        elif arg == "--config" and i + 1 < len(rest):
            found["config"] = rest[i + 1]
    return found, overrides


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
    from synthjax.errors import UserError
    from synthjax.train import train_and_evaluate

    try:
        config = FLAGS.config
        tuning.apply(config.train.cpu_allocator)  # process-level CPU tuning, before jax starts its backend
        train_and_evaluate(config, FLAGS.workdir)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume from the last checkpoint in {FLAGS.workdir}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
