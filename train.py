"""Train a synthjax model.

    python train.py --config configs/dcgan.py --workdir runs/dcgan [--config.opt.lr=1e-4]
    python train.py --config configs/vae_mlp.py:smoke --workdir /tmp/vae

Rerunning with the same --workdir resumes from its latest checkpoint. For
several hosts, start one process per host with --coordinator_address,
--num_processes and --process_id (or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables, or on TPU/SLURM
nothing at all with --distributed).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/dcgan.py[:smoke].", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "Index of this process in a multi-host run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detected settings (TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    import jax

    from synthjax.errors import UserError
    from synthjax.train import train_and_evaluate

    if FLAGS.coordinator_address or FLAGS.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume from the last checkpoint in {FLAGS.workdir}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    app.run(main)
