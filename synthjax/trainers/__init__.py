"""Model families behind one interface; importing this package registers them all."""
from synthjax.trainers.base import TRAINERS, Trainer, build_trainer, register
from synthjax.trainers import gan, vae  # noqa: F401  (registration)
from synthjax.trainers import convlstm, draw, pixelrnn  # noqa: F401  (registration)
from synthjax.trainers import vqvae  # noqa: F401  (registration)
from synthjax.trainers import diffusion  # noqa: F401  (registration)

__all__ = ["TRAINERS", "Trainer", "build_trainer", "register"]
