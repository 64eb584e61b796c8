"""beta-VAE (Higgins et al., 2017) on dynamically binarised MNIST: the conv VAE with the KL weighted by beta = 4.

Run:   python train.py --config configs/beta_vae.py --workdir runs/beta_vae
Smoke: python train.py --config configs/beta_vae.py:smoke --workdir /tmp/beta_vae
Sweep: python -m synthjax.sweep --config configs/beta_vae.py --vmap --workdir runs/beta_sweep   (beta x seed, one program)

Loss E[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)); beta > 1 trades
reconstruction for a more factorised, less informative code. Training logs
`loss` (the beta-weighted objective) and `neg_elbo` (the beta = 1 bound, what
eval/neg_elbo and eval/bits_per_dim report), so runs with different betas
compare on the same bound.

Reaches, at 1,500 of its 3,000 steps (7.9 min on one CPU core): IWAE
(k=1000) NLL 107.6 nats on the first 500 test digits, 103.5 on 500 train
digits (beta = 4 gives up likelihood, as it should); samples FID 44.8
(benchmarks/RESULTS.md, "Results: held-out figures of every config").
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "vae"
    c.model.arch = "conv"
    c.model.latent = 10
    c.model.hidden = 256
    c.model.width = 32
    c.objective.likelihood = "bernoulli"
    c.objective.beta = 4.0
    c.objective.iwae_k = 1
    c.data.binarize = True
    c.opt.lr = 1e-3
    c.train.update(batch_size=128, num_steps=3000, log_every=100, sample_every=1000, ckpt_every=1000)
    return finalize(c, arg, {"model.hidden": 16, "model.width": 4, "model.latent": 4})


def get_sweep():
    """beta in {1, 2, 4, 8} over two seeds; every axis can be vmapped."""
    return {"objective.beta": [1.0, 2.0, 4.0, 8.0], "seed": [0, 1]}
