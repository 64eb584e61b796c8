"""Run the root train.py CLI with every batch delayed on the host, so a test can SIGKILL it between checkpoints.

    python tests/helpers/slow_train.py DELAY_SECONDS --config ... --workdir ...
    python tests/helpers/slow_train.py DELAY_SECONDS -m synthjax.sweep --config ... --vmap --workdir ...

The delay is a `time.sleep` in the data feed, outside the compiled step: the
numbers computed are exactly those of `train.py` without it.
"""
import os
import runpy
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def slowed(feed, delay: float):
    def wrapped(*args, **kwargs):
        for item in feed(*args, **kwargs):
            time.sleep(delay)
            yield item

    return wrapped


if __name__ == "__main__":
    delay = float(sys.argv.pop(1))
    sys.path.insert(0, REPO)  # this checkout's synthjax, not an installed copy (as train.py run from REPO gets)
    # Patch the name synthjax.train will import, without importing synthjax.train (or
    # anything that touches a JAX backend) before train.py calls jax.distributed.initialize.
    import synthjax.data

    synthjax.data.feed_calls = slowed(synthjax.data.feed_calls, delay)
    if sys.argv[1] == "-m":  # a module entry point, e.g. synthjax.sweep
        module = sys.argv.pop(2)
        sys.argv.pop(1)
        sys.argv[0] = module
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv[0] = os.path.join(REPO, "train.py")
        runpy.run_path(sys.argv[0], run_name="__main__")
