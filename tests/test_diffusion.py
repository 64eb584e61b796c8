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


def test_discretized_gaussian_decoder_sums_to_one_over_the_256_levels():
    levels = jnp.linspace(-1.0, 1.0, 256).reshape(256, 1, 1, 1)
    for mean, log_var in [(0.0, -4.0), (0.97, -9.0), (-1.3, 0.0)]:
        log_p = D.discretized_gaussian_log_prob(levels, jnp.full_like(levels, mean), jnp.full_like(levels, log_var))
        np.testing.assert_allclose(float(jnp.sum(jnp.exp(log_p))), 1.0, rtol=1e-4)


def test_strata_partition_the_timesteps():
    for terms in (1, 7, 100, 1000):
        start, size = D.strata(1000, terms)
        np.testing.assert_array_equal(np.concatenate([np.arange(s, s + n) for s, n in zip(start, size)]), np.arange(1000))


@pytest.mark.parametrize("num_terms", [4, 50])
def test_bound_with_an_oracle_denoiser_is_prior_plus_decoder(num_terms):
    """A denoiser that returns the true x_0 makes every KL term 0: -VLB = L_T + decoder -log p(x_0 | x_0, beta~_1)."""
    sched = D.make_schedule("linear", 50)
    x0 = jnp.round(jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), minval=-1, maxval=1) * 127.5) / 127.5
    got = D.negative_bound(lambda x_t, t: x0, sched, x0, jax.random.key(2), num_terms)
    decoder = -D.discretized_gaussian_log_prob(x0, x0, jnp.full_like(x0, sched.posterior_log_var[0]))
    np.testing.assert_allclose(got, D.prior_kl(sched, x0) + decoder, rtol=1e-5)


def test_bound_terms_are_the_kl_between_gaussian_posteriors():
    """L_t for t >= 1 equals the KL of N(mu~, beta~) and N(mu_theta, beta~), computed here from its definition."""
    sched = D.make_schedule("cosine", 100)
    k1, k2 = jax.random.split(jax.random.key(3))
    x0, x_t = jax.random.uniform(k1, (2, 3), minval=-1, maxval=1), jax.random.normal(k2, (2, 3))
    x0_pred, t = 0.5 * x0, jnp.array([10, 60])
    m1, m2 = D.posterior_mean(sched, x0, x_t, t), D.posterior_mean(sched, x0_pred, x_t, t)
    var = np.asarray(sched.posterior_var[t])[:, None]
    want = np.sum(0.5 * (np.asarray(m1) - np.asarray(m2)) ** 2 / var, axis=1)
    np.testing.assert_allclose(D.bound_term(sched, x0, x_t, t, x0_pred), want, rtol=1e-4)


# --- U-Net and trainer ----------------------------------------------------------------------------

import math  # noqa: E402
import os  # noqa: E402

from synthjax.config import load_config  # noqa: E402
from synthjax.errors import UserError  # noqa: E402
from synthjax.models.unet import build_unet  # noqa: E402
from synthjax.trainers import build_trainer  # noqa: E402
from tests.test_trainers import REPO, run_steps, setup  # noqa: E402


def test_cifar10_config_builds_the_35_7m_parameter_network_of_ho_et_al():
    config = load_config(os.path.join(REPO, "configs", "ddpm_cifar10.py"))
    model = build_unet(config.model, (32, 32, 3), 0, jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32)))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert count == 35_746_307, count  # the paper's 35.7M (the PyTorch port of its TF code: 35,746,307)


def test_unet_refuses_sizes_it_cannot_halve_and_widths_groupnorm_cannot_split():
    config = load_config(os.path.join(REPO, "configs", "ddpm.py:smoke"))
    config.model.unlock()
    config.model.ch_mult = (1, 2, 2, 2)
    with pytest.raises(UserError, match=r"halves the 28x28 images 3 times"):
        build_unet(config.model, (28, 28, 1), 0, jnp.float32)
    config.model.ch_mult, config.model.groups = (1, 2), 3
    with pytest.raises(UserError, match=r"model.groups=3 does not divide"):
        build_unet(config.model, (28, 28, 1), 0, jnp.float32)


def test_samples_are_images_reproducible_from_the_seed_and_guidance_changes_them():
    trainer, dp, batches, state = setup("ddpm.py:smoke", ["model.class_cond=true"], devices=jax.devices()[:1])
    state, _ = run_steps(trainer, dp, batches, state, 2)
    state = dp.host_state(state)
    sample = jax.jit(trainer.sample, static_argnums=2)
    a, b = sample(state, jax.random.key(5), 6), sample(state, jax.random.key(5), 6)
    assert a.shape == (6, 28, 28, 1) and float(a.min()) >= 0 and float(a.max()) <= 1
    np.testing.assert_array_equal(a, b)
    # Guidance mixes the conditional and no-label outputs: u + w (c - u). The trained params, not the EMA
    # (after 2 steps the EMA is still the init, whose zero output layer makes every output 0).
    x, t, y = jnp.asarray(next(batches)["image"][:3]), jnp.array([10, 500, 900]), jnp.array([1, 2, 3])
    denoise = jax.jit(lambda labels, w: trainer.denoiser(state.params, labels, w)(x, t), static_argnums=1)  # not op by op
    cond, guided, uncond = denoise(y, 1.0), denoise(y, 3.0), denoise(jnp.full_like(y, trainer.num_labels), 1.0)
    assert float(jnp.max(jnp.abs(cond - uncond))) > 0
    np.testing.assert_allclose(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-6)


def test_log_likelihood_is_a_finite_bound_in_nats_per_image():
    """Every term of -VLB is a KL or a discrete -log P, so the estimate is finite and >= 0 (T = 20: betas capped below 1)."""
    trainer, dp, batches, state = setup("ddpm.py:smoke", ["objective.num_steps=20", "sample.steps=4"], devices=jax.devices()[:1])
    state = dp.host_state(state)
    x = next(batches)["image"][:4]
    ll = jax.jit(trainer.log_likelihood, static_argnums=3)
    full = np.asarray(ll(state, x, jax.random.key(0), 20))
    bits_per_dim = -full / (784 * np.log(2))
    assert full.shape == (4,) and np.all(np.isfinite(full)) and np.all(bits_per_dim > 0), bits_per_dim


def test_ema_warmup_caps_the_decay_and_forgets_the_initialisation():
    """The warmed-up decay against its float64 closed form, and what is left of the initial weights after
    3,000 updates: decay**3000 (5% at 0.999) without the warm-up, nothing with it."""
    from synthjax.trainers.vmappable import as_hparams, ema_hparams, ema_update, warm_up_ema

    hp = as_hparams(ema_hparams(0.999))
    for n in (0, 1, 100, 3000, 9000, 20000):
        got = warm_up_ema(hp, jnp.asarray(n, jnp.int32))
        want = min(0.999, (1 + n) / (10 + n))
        np.testing.assert_allclose(float(got["ema_decay"]), want, rtol=1e-6)
        np.testing.assert_allclose(float(got["ema_rate"]), 1 - want, rtol=1e-4)

    def left_of_init(warmup: bool) -> float:
        def update(ema, n):
            return ema_update(ema, jnp.zeros(()), warm_up_ema(hp, n) if warmup else hp), None
        return float(jax.lax.scan(update, jnp.ones(()), jnp.arange(3000))[0])

    np.testing.assert_allclose(left_of_init(False), 0.999**3000, rtol=1e-3)
    assert left_of_init(True) < 1e-20


def test_vmapped_ddpm_step_equals_member_steps():
    """Seed, learning rate and EMA decay as stacked hyperparameters: the same numbers as each member's own step
    (on one device: tests/test_sweep.py checks stacks split over devices)."""
    from synthjax.data import build_pipeline, get_source
    from synthjax.parallel import DataParallel, make_mesh
    from synthjax.stack import Stack, StackState, stack_trees

    members = [["seed=0"], ["seed=1", "opt.lr=3e-3", "model.ema_decay=0.9"]]
    configs = [load_config(os.path.join(REPO, "configs", "ddpm.py:smoke"), m) for m in members]
    source = get_source(configs[0].data)
    trainers = [build_trainer(c, source.image_shape, source.num_classes) for c in configs]
    mesh = make_mesh(jax.devices()[:1])
    trainer, dp = trainers[0], DataParallel("shard_map", mesh)
    assert set(trainer.vmappable_keys) == {"seed", "opt.lr", "model.ema_decay"}
    pipeline = build_pipeline(source, configs[0].train.batch_size, 0, trainer.preprocess, num_threads=0)
    batches = [dp.put_batch(next(pipeline)) for _ in range(2)]
    init = jax.jit(trainer.create_state)
    states = [init(jax.random.key(c.seed)) for c in configs]
    keys = [jax.random.key(100 + c.seed) for c in configs]
    stack = Stack(trainers, "halt", shared_data_order=True)  # it reads each member's hyperparameters itself
    sdp = DataParallel("shard_map", mesh, stacked_state=True)
    stacked_step = sdp.compile_step(stack.train_step)
    carry = sdp.put_state(StackState(stack_trees(states), jnp.zeros(len(states), jnp.int32)))
    for batch in batches:
        carry, stacked_metrics = stacked_step(carry, batch, jnp.stack(keys))
    for i, member in enumerate(trainers):
        plain = dp.compile_step(member.train_step)
        state = dp.put_state(init(jax.random.key(configs[i].seed)))
        initial = jax.device_get(dp.host_state(state).params)
        for n, batch in enumerate(batches):
            state, metrics = plain(state, batch, keys[i])
            if n == 0:  # model.ema_warmup: the first update's decay is min(ema_decay, 1/10), the init keeps a tenth
                first = jax.device_get(dp.host_state(state))
                jax.tree.map(lambda e, p, p0: np.testing.assert_allclose(e - p, 0.1 * (p0 - p), atol=1e-6),
                             first.ema_params, first.params, initial)
        want, got = jax.device_get(dp.host_state(state)), jax.device_get(jax.tree.map(lambda x: x[i], carry.members))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5, err_msg=f"member {i}"), got, want)
        for k, v in jax.device_get(dp.metrics(metrics)).items():
            np.testing.assert_allclose(jax.device_get(stacked_metrics[k])[i], v, rtol=1e-5, atol=1e-6, err_msg=k)
