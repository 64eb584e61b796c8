"""Save large checkpoints back to back until killed, so a test can SIGKILL it mid-save.

    python tests/helpers/save_forever.py WORKDIR

Step 1 is waited for (a known-good checkpoint); steps 2, 3, ... follow, each
~100 MB in many arrays, so every save spends a while in its
`<step>.orbax-checkpoint-tmp` directory before orbax renames it into place.
"""
import sys

import jax.numpy as jnp
from absl import logging

from synthjax.checkpoint import Checkpointer


def state_for(step: int) -> dict:
    return {f"w{i:02d}": jnp.full((1 << 20,), step * 100 + i, jnp.float32) for i in range(24)}


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    ckpt = Checkpointer(sys.argv[1], keep=100)
    ckpt.save(1, state_for(1), {"step": 1})
    ckpt.wait()
    print("saved 1", flush=True)
    step = 2
    while True:
        ckpt.save(step, state_for(step), {"step": step})
        ckpt.wait()
        step += 1
