"""GAN and VAE variants: penalties, DiffAugment, n_critic, spectral norm, conditioning, IWAE, VQ-VAE.

Pure functions are checked against closed forms; train steps run one or two
steps of tiny smoke configs (the MLP GAN wherever the architecture does not
matter, so compilation stays cheap).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax import augment
from synthjax.config import load_config
from synthjax.data import build_pipeline, get_source
from synthjax.errors import UserError
from synthjax.models.gan import build_gan
from synthjax.models.vq import ema_codebook_update
from synthjax.objectives import penalties
from synthjax.objectives.vae import iwae_bound
from synthjax.parallel import AXIS, DataParallel, make_mesh
from synthjax.trainers import build_trainer
from tests.helpers.runs import ADAM_EQUIVALENCE_LR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE = jax.devices()[:1]  # single-device steps where device count does not matter: smaller programs, faster tests
GAN_VARIANT = [
    "objective.loss=wasserstein", "objective.penalty=wgan_gp", "objective.n_critic=2",
    "objective.diffaugment=color,translation,cutout", "model.d_norm=spectral", "objective.clip=0.5",
]


def setup(config_name, overrides=(), devices=None):
    config = load_config(os.path.join(REPO, "configs", config_name), list(overrides))
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    dp = DataParallel("shard_map", make_mesh(devices))
    batches = build_pipeline(source, config.train.batch_size, config.seed, trainer.preprocess, num_threads=0)
    state = dp.put_state(jax.jit(trainer.create_state)(jax.random.key(config.seed)))
    return trainer, dp, batches, state


def run_steps(trainer, dp, batches, state, n):
    step = dp.compile_step(trainer.train_step)
    history = []
    for _ in range(n):
        state, metrics = step(state, dp.put_batch(next(batches)), jax.random.key(42))
        history.append({k: float(v) for k, v in jax.device_get(dp.metrics(metrics)).items()})
    return dp.host_state(state), history


# ----------------------------------------------------------------------------- pure functions


def linear_critic(w):
    return lambda x: jnp.sum(x * w, axis=(1, 2, 3))


def test_penalties_match_closed_forms_for_a_linear_critic():
    # D(x) = <w, x> has gradient w everywhere: WGAN-GP and DRAGAN give (|w| - 1)^2, R1 gives |w|^2 / 2.
    w = jnp.full((1, 2, 2, 1), 0.8)
    real, fake = jnp.ones((4, 2, 2, 1)), -jnp.ones((4, 2, 2, 1))
    norm = float(jnp.sqrt(jnp.sum(w**2)))
    key = jax.random.key(0)
    np.testing.assert_allclose(penalties.gradient_penalty(linear_critic(w), real, fake, key), (norm - 1) ** 2, rtol=1e-5)
    np.testing.assert_allclose(penalties.dragan_penalty(linear_critic(w), real, fake, key), (norm - 1) ** 2, rtol=1e-5)
    np.testing.assert_allclose(penalties.r1_penalty(linear_critic(w), real, fake, key), 0.5 * norm**2, rtol=1e-5)
    # The penalty is differentiable in the critic's parameters (double backprop).
    grad = jax.grad(lambda w: penalties.gradient_penalty(linear_critic(w), real, fake, key))(w)
    np.testing.assert_allclose(grad, 2 * (norm - 1) * w / norm, rtol=1e-4)


def test_diffaugment_ops_are_differentiable_and_do_what_they_say():
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 3), minval=-1, maxval=1)
    assert augment.diff_augment(x, jax.random.key(1), ()) is x
    policy = augment.parse_policy("color, translation,cutout")
    top = lambda key, shape: jnp.full(shape, 0.9999)  # noqa: E731  (a sampler fixed at the top of its range)
    mid = lambda key, shape: jnp.full(shape, 0.5)  # noqa: E731

    @jax.jit  # one compilation instead of one per eager op
    def run(x):
        y, grad = jax.value_and_grad(lambda x: jnp.sum(augment.diff_augment(x, jax.random.key(1), policy) ** 2))(x)
        shifted = augment.translation(x, jax.random.key(2), top)
        cut = augment.cutout(jnp.ones((2, 8, 8, 1)), jax.random.key(3), mid)
        return y, grad, shifted, cut

    y, grad, shifted, cut = run(x)
    assert bool(jnp.isfinite(y)) and float(jnp.abs(grad).sum()) > 0  # gradients reach the generator's images
    # The top of the range shifts by +1 pixel (1/8 of 8) each way and zero-fills the last row and column.
    np.testing.assert_array_equal(shifted[:, :-1, :-1], x[:, 1:, 1:])
    assert float(jnp.abs(shifted[:, -1]).max()) == 0.0 and float(jnp.abs(shifted[:, :, -1]).max()) == 0.0
    assert int(jnp.sum(cut[0] == 0)) == 16  # a 4x4 square: half the side


def test_ema_codebook_update_matches_numpy():
    rng = np.random.default_rng(0)
    old = {"codebook": rng.normal(size=(3, 2)), "cluster_size": np.ones(3), "embed_sum": rng.normal(size=(3, 2))}
    z, codes = rng.normal(size=(5, 2)), np.array([0, 0, 2, 2, 2])
    new = ema_codebook_update({"quantizer": old}, jnp.asarray(z), jnp.asarray(codes), 0.9, 0.1)["quantizer"]
    counts = np.array([2.0, 0.0, 3.0])
    sums = np.stack([z[codes == k].sum(0) if (codes == k).any() else np.zeros(2) for k in range(3)])
    size = 0.9 * old["cluster_size"] + 0.1 * counts
    embed = 0.9 * old["embed_sum"] + 0.1 * sums
    smoothed = (size + 1e-5) / (size.sum() + 3e-5) * size.sum()
    np.testing.assert_allclose(new["codebook"], embed / smoothed[:, None], rtol=1e-5)
    np.testing.assert_allclose(new["cluster_size"], size, rtol=1e-6)


def test_iwae_bound_is_logmeanexp_and_tightens_the_elbo():
    log_w = jnp.array([[-3.0, -1.0, -2.0], [0.5, 0.5, 0.5]])
    want = np.log(np.mean(np.exp(np.asarray(log_w)), axis=1))
    np.testing.assert_allclose(iwae_bound(log_w), want, rtol=1e-6)
    assert bool(jnp.all(iwae_bound(log_w) >= jnp.mean(log_w, axis=1)))  # Jensen: above the average ELBO
    np.testing.assert_allclose(iwae_bound(log_w[:, :1]), log_w[:, 0])  # K = 1 is the one-sample ELBO


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, num_classes, message",
    [
        (["objective.loss=wgan"], 10, r"unknown GAN loss 'wgan'.*valid: hinge, lsgan, minimax, ns, wasserstein"),
        (["objective.penalty=gp"], 10, r"unknown discriminator penalty 'gp'.*valid: dragan, none, r1, wgan_gp"),
        (["model.arch=stylegan"], 10, r"unknown GAN architecture 'stylegan'.*valid: dcgan, mlp, resnet"),
        (["model.d_norm=layer"], 10, r"model.d_norm='layer'.*valid: batch, spectral, none"),
        (["objective.diffaugment=color,flip"], 10, r"unknown DiffAugment op 'flip'.*valid: color, cutout, translation"),
        (["objective.n_critic=3"], 10, r"train.batch_size=16 must be a multiple of objective.n_critic=3"),
        (["model.conditional=True", "data.name=folder"], 0, r"model.conditional=True .* data.name='folder' has no labels"),
    ],
)
def test_bad_gan_settings_fail_with_actionable_errors(overrides, num_classes, message):
    config = load_config(os.path.join(REPO, "configs", "dcgan.py:smoke"), overrides)
    with pytest.raises(UserError, match=message):
        build_trainer(config, (28, 28, 1), num_classes)


def test_iwae_refuses_a_kl_weight():
    config = load_config(os.path.join(REPO, "configs", "iwae.py:smoke"), ["objective.beta=4"])
    with pytest.raises(UserError, match="objective.iwae_k=3 .* set objective.beta=1"):
        build_trainer(config, (28, 28, 1), 10)


# ----------------------------------------------------------------------------- architectures


def test_sngan_resnet_has_the_cifar_layout_and_conditional_parts():
    config = load_config(os.path.join(REPO, "configs", "sngan.py"), ["model.g_width=16", "model.d_width=8"])
    g, d = build_gan(config.model, (32, 32, 3), jnp.float32, num_classes=10)
    z, y = jnp.zeros((2, 128)), jnp.array([1, 7])
    # Shapes only (eval_shape): nothing is compiled.
    g_vars = jax.eval_shape(lambda k: g.init(k, z, y, train=False), jax.random.key(0))
    d_vars = jax.eval_shape(lambda k: d.init(k, jnp.zeros((2, 32, 32, 3)), y, train=False), jax.random.key(1))
    assert jax.eval_shape(lambda v: g.apply(v, z, y, train=False), g_vars).shape == (2, 32, 32, 3)
    assert jax.eval_shape(lambda v: d.apply(v, jnp.zeros((2, 32, 32, 3)), y, train=False), d_vars).shape == (2,)
    assert len([k for k in g_vars["params"] if k.startswith("GeneratorBlock")]) == 3  # 4 -> 8 -> 16 -> 32
    assert "gain" in g_vars["params"]["GeneratorBlock_0"]["ConditionalBatchNorm_0"]  # per-class BN gain
    assert "projection" in d_vars["params"]  # projection discriminator's class embedding
    sn_vectors = [p for p in jax.tree_util.tree_flatten_with_path(d_vars["batch_stats"])[0] if str(p[0][-1]).endswith("/u']")]
    assert len(sn_vectors) == 4 * 2 + 2 + 1 + 1  # two convs per block, two 1x1 shortcuts, the logit and the embedding


# ----------------------------------------------------------------------------- train steps


def test_gan_variant_step_updates_spectral_norm_state_clips_and_conditions_on_labels():
    # One compiled step covers penalty, n_critic (a scan with labels), augmentation, clipping, spectral norm and
    # class conditioning (the MLP's: labels concatenated to z, projection D; it compiles in a fraction of the
    # DCGAN's time, and cgan.py's conditional DCGAN runs end to end in tests/test_train_e2e.py).
    trainer, dp, batches, state = setup("gan_mlp.py:smoke", [*GAN_VARIANT, "model.conditional=True"], ONE)
    before = jax.device_get(dp.host_state(state))
    after, (m1, m2) = run_steps(trainer, dp, batches, state, 2)
    assert all(np.isfinite(v) for m in (m1, m2) for v in m.values()) and m1["penalty"] > 0
    u_before, u_after = jax.tree.leaves(before.d_stats), jax.tree.leaves(after.d_stats)
    assert u_before and any(not np.allclose(a, b) for a, b in zip(u_before, u_after))  # power iteration state moves
    assert max(float(jnp.max(jnp.abs(p))) for p in jax.tree.leaves(after.d_params)) <= 0.5 + 1e-6
    z = jax.random.normal(jax.random.key(0), (1, trainer.config.model.z_dim)).repeat(2, axis=0)
    pair = jax.jit(lambda v, y: trainer.generator.apply(v, z, y, train=False))(
        {"params": after.ema_params, "batch_stats": after.g_stats}, jnp.array([0, 1]))
    assert float(jnp.abs(pair[0] - pair[1]).max()) > 0  # same noise, two labels, two images


def test_critic_split_is_the_same_on_any_number_of_devices():
    """Device d's split i, concatenated over devices, is the global split i, in order.

    Noise drawn by `parallel.normal` for a split is the global draw sliced by
    device, so images and noise pair up the same way on 1 or N devices.
    """
    config = load_config(os.path.join(REPO, "configs", "dcgan.py:smoke"), ["objective.n_critic=2", "model.conditional=True"])
    trainer = build_trainer(config, (28, 28, 1), 10)
    positions = np.arange(16)
    batch = lambda p: {"image": p.reshape(-1, 1, 1, 1).astype(np.float32), "label": p}  # noqa: E731
    global_images, global_labels = trainer._critic_splits(batch(positions))
    np.testing.assert_array_equal(global_images[1, :, 0, 0, 0], positions[1::2])
    local = [trainer._critic_splits(batch(block)) for block in np.split(positions, 4)]
    for i in range(2):
        np.testing.assert_array_equal(np.concatenate([images[i] for images, _ in local]), global_images[i])
        np.testing.assert_array_equal(np.concatenate([labels[i] for _, labels in local]), global_labels[i])


def test_iwae_step_trains_on_the_importance_weighted_bound():
    # beta-VAE steps (loss = rec + beta * kl) are checked per member in tests/test_sweep.py.
    trainer, dp, batches, state = setup("iwae.py:smoke", devices=ONE)
    _, (m,) = run_steps(trainer, dp, batches, state, 1)
    assert np.isfinite(m["loss"]) and m["loss"] <= m["neg_elbo"] + 1e-3  # the bound is at least the average ELBO of its samples


def test_vqvae_ema_codebook_and_straight_through_gradients():
    trainer, dp, batches, state = setup("vqvae.py:smoke", devices=ONE)
    before = jax.device_get(dp.host_state(state))
    after, (m1, m2) = run_steps(trainer, dp, batches, state, 2)
    assert all(np.isfinite(v) for v in m2.values()) and 1.0 <= m2["perplexity"] <= trainer.config.model.num_codes
    assert not np.allclose(before.vq["quantizer"]["codebook"], after.vq["quantizer"]["codebook"])  # EMA moved it
    assert "quantizer" not in after.params  # with EMA the codebook is state, not a trained parameter
    enc_before, enc_after = jax.tree.leaves(before.params["encoder"]), jax.tree.leaves(after.params["encoder"])
    assert any(not np.allclose(a, b) for a, b in zip(enc_before, enc_after))  # reconstruction gradients reach the encoder


def test_conditional_sngan_traces_on_mocked_cifar10():
    """The 32x32 path through tensorflow-datasets (mocked: no download offline): data, labels and one full step, traced."""
    import tensorflow_datasets as tfds

    config = load_config(os.path.join(REPO, "configs", "sngan.py"),
                         ["model.conditional=True", "model.g_width=8", "model.d_width=8", "train.batch_size=20"])
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        source = get_source(config.data)
        batch = next(build_pipeline(source, 20, 0, build_trainer(config, source.image_shape, source.num_classes).preprocess))
    assert source.name == "cifar10" and source.image_shape == (32, 32, 3) and source.num_classes == 10
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    dp = DataParallel("shard_map", make_mesh(ONE))
    state = jax.eval_shape(trainer.create_state, jax.random.key(0))
    new_state, metrics = jax.eval_shape(dp.compile_step(trainer.train_step), state, batch, jax.random.key(1))
    assert jax.tree.map(lambda a: a.shape, new_state) == jax.tree.map(lambda a: a.shape, state)
    assert set(metrics) >= {"d_loss", "g_loss"} and batch["label"].shape == (20,)


# ----------------------------------------------------------------------------- joint discriminator pass


def test_merged_two_pass_statistics_equal_two_passes_in_a_row():
    # BatchNorm's running averages after the real pass then the fake pass, against the vmapped pair merged.
    from synthjax.models.gan import merge_two_pass_stats, two_passes_mergeable

    _, disc = build_gan(load_config(os.path.join(REPO, "configs", "dcgan.py:smoke")).model, (28, 28, 1), jnp.float32)
    real, fake = jax.random.normal(jax.random.key(0), (2, 8, 28, 28, 1))
    variables = disc.init(jax.random.key(1), real, train=False)
    params, stats = variables["params"], jax.tree.map(lambda s: s + 0.3, variables["batch_stats"])

    def apply(x, s):
        logits, upd = disc.apply({"params": params, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
        return logits, upd["batch_stats"]

    def both_ways(real, fake):
        real_logits, after_real = apply(real, stats)
        fake_logits, in_a_row = apply(fake, after_real)
        logits, stacked = jax.vmap(lambda x: apply(x, stats))(jnp.stack([real, fake]))
        return real_logits, fake_logits, in_a_row, logits, merge_two_pass_stats(stats, stacked)

    # BatchNorm averages over the data-parallel axis, bound here as in the train step (one member).
    outs = jax.vmap(both_ways, axis_name=AXIS)(real[None], fake[None])
    real_logits, fake_logits, in_a_row, logits, merged = jax.tree.map(lambda a: a[0], outs)
    assert two_passes_mergeable(stats)
    np.testing.assert_allclose(logits[0], real_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits[1], fake_logits, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), merged, in_a_row)
    # Spectral norm's power-iteration vectors are not running averages: those discriminators keep two passes.
    _, sn = build_gan(load_config(os.path.join(REPO, "configs", "dcgan.py:smoke"), ["model.d_norm=spectral"]).model,
                      (28, 28, 1), jnp.float32)
    assert not two_passes_mergeable(sn.init(jax.random.key(1), real, train=False)["batch_stats"])


@pytest.mark.parametrize("config_name, extra, materialise", [("dcgan.py:smoke", [], False), ("wgan_gp.py:smoke", [], False),
                                                              ("dcgan.py:smoke", [], True)])
def test_joint_discriminator_pass_trains_as_two_passes_do(config_name, extra, materialise, monkeypatch):
    # The same two steps with the passes batched and in a row: equal up to float32 rounding. `materialise`:
    # with the stacked batch behind an optimisation barrier, as on GPU.
    from synthjax.trainers import gan

    monkeypatch.setattr(gan, "MATERIALISE_JOINT_BATCH", (jax.default_backend(),) if materialise else ())
    runs = {}
    for joint in ("on", "off"):
        trainer, dp, batches, state = setup(config_name, [*extra, ADAM_EQUIVALENCE_LR, f"model.d_joint_pass={joint}"], ONE)
        assert trainer.joint_pass == (joint == "on")
        runs[joint] = run_steps(trainer, dp, batches, state, 2)
    (on_state, on_hist), (off_state, off_hist) = runs["on"], runs["off"]
    for a, b in zip(on_hist, off_hist):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                 (on_state.d_params, on_state.d_stats, on_state.g_params), (off_state.d_params, off_state.d_stats, off_state.g_params))


def test_joint_pass_setting_resolves_by_backend_and_names_bad_values():
    from synthjax.trainers.gan import resolve_joint_pass

    assert resolve_joint_pass("auto", "gpu") and not resolve_joint_pass("auto", "cpu") and not resolve_joint_pass("auto", "tpu")
    assert resolve_joint_pass("on", "cpu") and not resolve_joint_pass(False, "gpu")
    with pytest.raises(UserError, match="d_joint_pass='sometimes'"):
        resolve_joint_pass("sometimes")
