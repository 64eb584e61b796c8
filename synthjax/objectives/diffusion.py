"""Denoising diffusion (Ho et al. 2020): noise schedules, the forward process, losses, samplers and the bound.

Timesteps are 0-indexed: t = 0 .. T-1 is the paper's 1 .. T. `abar[t]` is
prod_{s<=t} (1 - beta_s), so x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
The network predicts eps, x_0 or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(Salimans & Ho 2022); `to_eps_x0` turns any of them into the pair the
samplers and the bound use, so everything downstream is parameterisation-free.

Samplers are one `lax.fori_loop` over a decreasing subsequence of timesteps:
the generalised DDIM update (Song et al. 2021) with eta = 0 is DDIM, and with
eta = 1 on all T steps it is Ho et al.'s ancestral sampler with the posterior
variance beta~_t (the same update, written in DDIM form).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from synthjax.errors import UserError

PREDICTIONS = ("eps", "x0", "v")
SCHEDULES = ("linear", "cosine")
SAMPLERS = {"ddpm": 1.0, "ddim": 0.0}  # sampler name -> eta

# A denoiser maps (x_t, t (B,) int32) to the network output, in the parameterisation of the trainer.
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


class Schedule(NamedTuple):
    """Per-timestep constants (float32, shape (T,)), computed in float64 and rounded once."""

    betas: jax.Array
    abar: jax.Array  # cumulative product of 1 - beta
    abar_prev: jax.Array  # abar[t-1], with abar[-1] = 1
    posterior_var: jax.Array  # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
    posterior_log_var: jax.Array  # log beta~_t with beta~_0 replaced by beta~_1 (beta~_0 = 0)

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def linear_betas(num_steps: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    """Ho et al.'s linear schedule; the endpoints are for T = 1000 and are rescaled by 1000/T so abar_T stays ~0."""
    scale = 1000.0 / num_steps
    return np.linspace(scale * start, scale * end, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2((t/T + s)/(1 + s) * pi/2), betas clipped at `max_beta`."""
    f = np.cos((np.arange(num_steps + 1, dtype=np.float64) / num_steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def make_schedule(name: str, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """The schedule `name` ('linear' or 'cosine') with `num_steps` steps."""
    if name not in SCHEDULES:
        raise UserError(f"objective.schedule={name!r} is not one of {', '.join(SCHEDULES)}")
    if not isinstance(num_steps, int) or num_steps < 2:
        raise UserError(f"objective.num_steps must be an integer >= 2, got {num_steps!r}")
    betas = linear_betas(num_steps, beta_start, beta_end) if name == "linear" else cosine_betas(num_steps)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    posterior_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    posterior_log_var = np.log(np.concatenate([posterior_var[1:2], posterior_var[1:]]))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return Schedule(f32(betas), f32(abar), f32(abar_prev), f32(posterior_var), f32(posterior_log_var))


def _bcast(values_t: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example values (B,) shaped to broadcast against x (B, ...)."""
    return values_t.reshape(values_t.shape + (1,) * (x.ndim - values_t.ndim))


def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), with the given standard normal noise."""
    abar = _bcast(sched.abar[t], x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def target(prediction: str, sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """What the network regresses on: eps, x_0 or v."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    abar = _bcast(sched.abar[t], x0)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0


def to_eps_x0(prediction: str, sched: Schedule, out: jax.Array, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(eps, x_0) implied by the network output `out` at (x_t, t) in the given parameterisation."""
    abar = _bcast(sched.abar[t], x_t)
    a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
    if prediction == "eps":
        return out, (x_t - s * out) / a
    if prediction == "x0":
        return (x_t - a * out) / s, out
    return a * out + s * x_t, a * x_t - s * out


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise UserError(f"objective.prediction={prediction!r} is not one of {', '.join(PREDICTIONS)}")
    return prediction


def mse_loss(out: jax.Array, want: jax.Array) -> jax.Array:
    """Ho et al.'s simplified objective: the squared error per example, averaged over pixels, shape (B,)."""
    err = jnp.square(out.astype(jnp.float32) - want)
    return jnp.mean(err.reshape(err.shape[0], -1), axis=1)


def posterior_mean(sched: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """The mean of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7)."""
    beta, abar, abar_prev = (_bcast(v[t], x_t) for v in (sched.betas, sched.abar, sched.abar_prev))
    coef_x0 = beta * jnp.sqrt(abar_prev) / (1.0 - abar)
    coef_xt = (1.0 - abar_prev) * jnp.sqrt(1.0 - beta) / (1.0 - abar)
    return coef_x0 * x0 + coef_xt * x_t


# --- samplers ---------------------------------------------------------------------------------


def sampling_timesteps(num_train_steps: int, num_sample_steps: int) -> np.ndarray:
    """`num_sample_steps` evenly spaced timesteps from T-1 down to 0 (int32), the whole chain when equal."""
    if not isinstance(num_sample_steps, int) or not 1 <= num_sample_steps <= num_train_steps:
        raise UserError(f"sample.steps must be an integer in [1, {num_train_steps}] (objective.num_steps), got {num_sample_steps!r}")
    ts = np.round(np.linspace(0, num_train_steps - 1, num_sample_steps)).astype(np.int32)
    return ts[::-1].copy()


def generalized_step(x_t, eps, x0, abar_t, abar_prev, eta, noise):
    """x_{t'} from x_t given (eps, x_0) (Song et al. eq. 12): eta = 0 deterministic, eta = 1 the ancestral posterior."""
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(abar_prev) * x0 + direction + sigma * noise


def sample_loop(
    denoiser: Denoiser,
    prediction: str,
    sched: Schedule,
    shape: tuple[int, ...],
    key: jax.Array,
    steps: int,
    eta: float,
    clip_x0: bool = True,
) -> jax.Array:
    """Samples of `shape` by `steps` denoising steps in one `fori_loop`; eta 1 = DDPM, 0 = DDIM.

    With `clip_x0` the predicted x_0 is clipped to the data range [-1, 1] and
    eps recomputed from it, as Ho et al. do, so both stay consistent with x_t.
    The final step (to t = -1, abar = 1) returns the predicted x_0. Noise for
    step i is `fold_in(key, i)`, so the samples depend only on the seed.
    """
    ts = jnp.asarray(sampling_timesteps(sched.num_steps, steps))
    prev = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
    init_key, loop_key = jax.random.split(key)
    x = jax.random.normal(init_key, shape)

    def body(i, x):
        t, t_prev = ts[i], prev[i]
        t_b = jnp.full((shape[0],), t, jnp.int32)
        eps, x0 = to_eps_x0(prediction, sched, denoiser(x, t_b).astype(jnp.float32), x, t_b)
        abar_t = sched.abar[t]
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x - jnp.sqrt(abar_t) * x0) / jnp.sqrt(1.0 - abar_t)
        abar_prev = jnp.where(t_prev >= 0, sched.abar[jnp.maximum(t_prev, 0)], 1.0)
        noise = jax.random.normal(jax.random.fold_in(loop_key, i), shape)
        return generalized_step(x, eps, x0, abar_t, abar_prev, eta, noise)

    return jax.lax.fori_loop(0, steps, body, x)


# --- the variational bound ----------------------------------------------------------------------


def _normal_cdf(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_prob(x: jax.Array, mean: jax.Array, log_var: jax.Array, bins: int = 256) -> jax.Array:
    """log P(x) per image (nats) for x on the grid of `bins` levels in [-1, 1] (Ho et al.'s decoder L_0).

    Each level owns the interval of width 2/(bins-1) around it; the outermost
    levels take the tails to -inf and +inf, so the probabilities sum to one.
    """
    half = 1.0 / (bins - 1)
    inv_std = jnp.exp(-0.5 * log_var)
    cdf_hi = jnp.where(x > 1.0 - 1e-3, 1.0, _normal_cdf((x - mean + half) * inv_std))
    cdf_lo = jnp.where(x < -1.0 + 1e-3, 0.0, _normal_cdf((x - mean - half) * inv_std))
    log_p = jnp.log(jnp.maximum(cdf_hi - cdf_lo, 1e-12))
    return jnp.sum(log_p.reshape(x.shape[0], -1), axis=1)


def prior_kl(sched: Schedule, x0: jax.Array) -> jax.Array:
    """KL(q(x_T | x_0) || N(0, I)) per image in nats (L_T; ~0 for the usual schedules)."""
    abar = sched.abar[-1]
    kl = 0.5 * (abar * jnp.square(x0) + (1.0 - abar) - 1.0 - jnp.log(1.0 - abar))
    return jnp.sum(kl.reshape(x0.shape[0], -1), axis=1)


def bound_term(sched: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, x0_pred: jax.Array) -> jax.Array:
    """L_{t} per image in nats: the decoder's -log p(x_0 | x_1) at t = 0, else KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)).

    p(x_{t-1} | x_t) = N(posterior_mean(x0_pred, x_t, t), beta~_t I), the
    variance Ho et al. call fixed-small, so the KL is the scaled squared
    distance between the two means. The decoder at t = 0 is the discretized
    Gaussian with mean x0_pred and variance beta~_1.
    """
    true_mean = posterior_mean(sched, x0, x_t, t)
    model_mean = posterior_mean(sched, x0_pred, x_t, t)
    var = _bcast(sched.posterior_var[t], x0)
    kl = jnp.sum((jnp.square(true_mean - model_mean) / (2.0 * jnp.maximum(var, 1e-20))).reshape(x0.shape[0], -1), axis=1)
    decoder = -discretized_gaussian_log_prob(x0, model_mean, _bcast(sched.posterior_log_var[t], x0))
    return jnp.where(t == 0, decoder, kl)


def strata(num_train_steps: int, num_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of `num_terms` contiguous strata that partition 0 .. T-1."""
    edges = np.floor(np.arange(num_terms + 1) * num_train_steps / num_terms).astype(np.int32)
    return edges[:-1], np.diff(edges)


def negative_bound(
    denoise_x0: Callable[[jax.Array, jax.Array], jax.Array],
    sched: Schedule,
    x0: jax.Array,
    key: jax.Array,
    num_terms: int,
) -> jax.Array:
    """An unbiased estimate of -(variational lower bound on log p(x_0)) per image, in nats, shape (B,).

    -VLB = L_T + L_0 + sum_{t=1}^{T-1} L_t. L_T and the decoder term L_0 (the
    largest for a trained model) are always evaluated; with `num_terms` >= T
    so is every other term (one noise draw each), with fewer 1..T-1 is cut
    into `num_terms` - 1 strata, one t drawn uniformly in each and its term
    weighted by the stratum's size, so the expectation over the draws is still
    exactly -VLB. `denoise_x0(x_t, t)` returns the model's predicted x_0.
    """
    num_strata = max(1, min(num_terms, sched.num_steps) - 1)
    start, size = (jnp.asarray(np.append(a, 0)) for a in strata(sched.num_steps - 1, num_strata))
    batch = x0.shape[0]

    def term(total, k):
        t_key, n_key = jax.random.split(jax.random.fold_in(key, k))
        t = 1 + start[k] + jax.random.randint(t_key, (batch,), 0, size[k])
        t = jnp.where(k == num_strata, 0, t)  # the last pass is the decoder term at t = 0
        weight = jnp.where(k == num_strata, 1, size[k])
        x_t = q_sample(sched, x0, t, jax.random.normal(n_key, x0.shape))
        return total + weight * bound_term(sched, x0, x_t, t, denoise_x0(x_t, t)), None

    total, _ = jax.lax.scan(term, prior_kl(sched, x0), jnp.arange(num_strata + 1))
    return total
