"""Diffusion family: schedules and parameterisations, samplers against a closed form, the bound, the U-Net and trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax.objectives import diffusion as D

# --- objective ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", D.SCHEDULES)
def test_schedules_decrease_from_one_to_almost_zero(name):
    sched = D.make_schedule(name, 1000)
    abar = np.asarray(sched.abar)
    assert np.all(np.diff(abar) < 0) and abar[0] > 0.99 and abar[-1] < 1e-4
    assert float(sched.posterior_var[0]) == 0.0 and np.isfinite(np.asarray(sched.posterior_log_var)).all()


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_each_parameterisation_recovers_eps_and_x0_from_its_target(prediction):
    sched = D.make_schedule("cosine", 100)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k1, (5, 4, 4, 1), minval=-1, maxval=1)
    noise = jax.random.normal(k2, x0.shape)
    t = jnp.array([0, 10, 50, 90, 99])
    x_t = D.q_sample(sched, x0, t, noise)
    eps, x0_back = D.to_eps_x0(prediction, sched, D.target(prediction, sched, x0, t, noise), x_t, t)
    np.testing.assert_allclose(eps, noise, atol=2e-3 if prediction == "x0" else 2e-5)
    np.testing.assert_allclose(x0_back, x0, atol=2e-3 if prediction == "eps" else 2e-5)


def test_ddpm_step_is_the_posterior_of_ho_et_al():
    """eta = 1 on consecutive steps: mean posterior_mean(x0, x_t, t), standard deviation sqrt(beta~_t)."""
    sched = D.make_schedule("linear", 1000)
    t = 500
    x0, x_t = jnp.full((1, 3), 0.3), jnp.full((1, 3), -0.4)
    eps = (x_t - jnp.sqrt(sched.abar[t]) * x0) / jnp.sqrt(1 - sched.abar[t])
    step = lambda noise: D.generalized_step(x_t, eps, x0, sched.abar[t], sched.abar[t - 1], 1.0, noise)
    mean = D.posterior_mean(sched, x0, x_t, jnp.array([t]))
    np.testing.assert_allclose(step(0.0), mean, rtol=1e-5)
    np.testing.assert_allclose(step(1.0) - step(0.0), jnp.sqrt(sched.posterior_var[t]), rtol=1e-4)


# Gaussian data N(mu, Sigma): the optimal eps-denoiser is analytic, so a correct sampler run with it must
# return samples of N(mu, Sigma). Small variances (0.02..0.1) stress the end of the chain.
MU = np.array([0.5, -0.3, 0.2])
_A = np.array([[0.3, 0.1, 0.0], [0.0, 0.2, 0.05], [0.05, 0.0, 0.15]])
SIGMA = _A @ _A.T
NUM = 4000


def optimal_eps(sched):
    """eps*(x_t, t) = sqrt(1 - abar_t) (abar_t Sigma + (1 - abar_t) I)^{-1} (x_t - sqrt(abar_t) mu)."""
    def denoiser(x, t):
        abar = sched.abar[t[0]]
        cov = abar * jnp.asarray(SIGMA) + (1 - abar) * jnp.eye(3)
        return jnp.sqrt(1 - abar) * jnp.linalg.solve(cov, (x - jnp.sqrt(abar) * jnp.asarray(MU)).T).T
    return denoiser


@pytest.mark.parametrize("sampler, steps", [("ddpm", 1000), ("ddim", 250)])
def test_samplers_with_the_optimal_denoiser_recover_gaussian_data(sampler, steps):
    """Sample mean and covariance within 4.5 standard errors of (mu, Sigma); the same seed gives the same samples.

    DDIM's deterministic ODE discretisation needs enough steps for small variances: measured max
    covariance error 1.4 SE at 250 steps, 11 SE at 50 (not a sampling error: a discretisation bias).
    """
    sched = D.make_schedule("linear", 1000)
    run = jax.jit(lambda key: D.sample_loop(optimal_eps(sched), "eps", sched, (NUM, 3), key, steps,
                                            D.SAMPLERS[sampler], clip_x0=False))
    x = np.asarray(run(jax.random.key(0)), np.float64)
    se_mean = np.sqrt(np.diag(SIGMA) / NUM)
    se_cov = np.sqrt((np.outer(np.diag(SIGMA), np.diag(SIGMA)) + SIGMA**2) / NUM)
    assert np.max(np.abs(x.mean(0) - MU) / se_mean) < 4.5, x.mean(0)
    assert np.max(np.abs(np.cov(x.T) - SIGMA) / se_cov) < 4.5, np.cov(x.T)
    np.testing.assert_array_equal(np.asarray(run(jax.random.key(0)), np.float64), x)
