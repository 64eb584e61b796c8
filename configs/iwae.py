"""IWAE (Burda et al., 2016) on dynamically binarised MNIST: the MLP VAE trained on the k = 5 importance-weighted bound.

Run:   python train.py --config configs/iwae.py --workdir runs/iwae
Smoke: python train.py --config configs/iwae.py:smoke --workdir /tmp/iwae
Sweep: python -m synthjax.sweep --config configs/iwae.py --workdir runs/iwae_sweep   (k = 1 vs 5; k changes shapes, so no --vmap over it)

784 -> 200 (ReLU) -> 50 latents -> 200 (ReLU) -> 784 Bernoulli logits: the
repository's one-hidden-layer MLP VAE (the paper's has two tanh layers of 200
each way). Training maximises
log (1/k) sum_k p(x, z_k) / q(z_k|x) with k = objective.iwae_k samples per
image; the logged `loss` is the negative bound, `neg_elbo` the average
one-sample bound of the same draws. Compare with
`python -m synthjax.evaluate --metrics nll` (IWAE with eval.iwae_k samples).

Reaches, as shipped (5,000 steps, 1.8 min on one CPU core): IWAE (k=1000)
NLL 98.8 nats on the first 500 test digits, 95.4 on 500 train digits;
samples FID 62.1 (benchmarks/RESULTS.md, "Results: held-out figures of every config").
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "vae"
    c.model.arch = "mlp"
    c.model.latent = 50
    c.model.hidden = 200
    c.objective.likelihood = "bernoulli"
    c.objective.beta = 1.0
    c.objective.iwae_k = 5
    c.data.binarize = True
    c.opt.lr = 1e-3
    c.train.update(batch_size=128, num_steps=5000, log_every=100, sample_every=1000, ckpt_every=1000)
    return finalize(c, arg, {"model.hidden": 32, "model.latent": 4, "objective.iwae_k": 3})


def get_sweep():
    """The number of importance samples (1 = the VAE's ELBO, but with a sampled KL) over two seeds."""
    return {"objective.iwae_k": [1, 5], "seed": [0, 1]}
