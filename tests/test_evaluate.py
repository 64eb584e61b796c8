"""synthjax.evaluate: eval.json from a smoke-trained GAN, periodic evaluation, the reference cache, VAE IWAE, errors,
the fid10k/fid50k presets, and sample features that are the same on 1 or 4 devices and 1 or 2 processes.

One tiny classifier (a few steps) and one smoke DCGAN run (with periodic
evaluation switched on) are module fixtures, built once: the module's tests
run on one xdist worker (`xdist_group`). Tests that write into the run get
their own copy.
"""
import json
import math
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from synthjax import evaluate as ev
from synthjax.config import load_config
from synthjax.data import bundled_split_indices, load_bundled_mnist
from synthjax.errors import UserError
from synthjax.metrics import classifier as clf
from synthjax.metrics import FeatureExtractor, InputSpec, frechet_distance, gaussian_stats, reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num=200, num_ref=500)  # 200 > 129: enough for a non-singular 128-d FID covariance
QUIET = dict(log=lambda _: None)
pytestmark = pytest.mark.xdist_group("evaluate")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private $SYNTHJAX_CACHE holding a classifier trained for a few steps (the default trains 2000)."""
    root = tmp_path_factory.mktemp("synthjax-eval-cache")
    clf.train_and_save(root / clf.WEIGHTS_FILE, steps=40, **QUIET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNTHJAX_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def extractor(cache):
    return clf.ClassifierFeatureExtractor.from_npz(clf.default_weights_path())


@pytest.fixture(scope="module")
def gan_run(cache, tmp_path_factory):
    """configs/dcgan.py:smoke trained for 6 steps with evaluation every 3 steps (read-only: copy to write)."""
    from synthjax.train import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("synthjax-eval-gan"))
    overrides = ["eval.every=3", "eval.num=200", "eval.num_ref=500", "eval.metrics=fid,kid,is,pr"]
    train_and_evaluate(load_config(os.path.join(REPO, "configs/dcgan.py:smoke"), overrides), workdir)
    return workdir


@pytest.fixture
def gan_workdir(gan_run, tmp_path):
    """A private copy of the smoke GAN run, for tests that write eval.json."""
    return str(shutil.copytree(gan_run, tmp_path / "gan"))


def test_periodic_evaluation_is_logged_like_other_metrics(gan_run):
    lines = [json.loads(line) for line in open(os.path.join(gan_run, "metrics.jsonl"))]
    evals = [r for r in lines if "eval/fid" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["eval/split"] == "test" for r in lines if any(k.startswith("eval/") for k in r))
    for r in evals:
        for key in ("eval/fid", "eval/kid", "eval/is", "eval/precision", "eval/recall"):
            assert math.isfinite(r[key]), (key, r)


def test_evaluate_workdir_writes_eval_json_with_finite_metrics(gan_workdir, extractor):
    result = ev.evaluate_workdir(gan_workdir, ev.EvalSettings(**SMALL), **QUIET)
    saved = json.load(open(os.path.join(gan_workdir, "eval.json")))
    assert saved == json.loads(json.dumps(result))
    assert saved["step"] == 6 and saved["num_samples"] == 200 and saved["dataset"]["name"] == "mnist_bundled"
    assert saved["split"] == saved["dataset"]["split"] == "test" and saved["reference"]["num"] == 500
    assert saved["extractor"]["weights_sha256"] == extractor.weights_hash
    for key in ("fid", "kid", "kid_std", "is", "is_std", "is_real", "is_confident", "is_class_min", "is_class_max", "precision", "recall"):
        assert math.isfinite(saved["metrics"][key]), key
    assert saved["metrics"]["fid"] > 0 and 1.0 <= saved["metrics"]["is"] <= 10.0
    assert "nll_nats" not in saved["metrics"]  # a GAN has no likelihood: nll is not in the default set


def test_reference_cache_is_reused_and_keyed_by_weights_hash(gan_workdir, cache, tmp_path):
    settings = ev.EvalSettings(**SMALL, metrics=("fid",))
    first = ev.evaluate_workdir(gan_workdir, settings, **QUIET)
    path = first["reference"]["path"]
    mtime = os.stat(path).st_mtime_ns
    second = ev.evaluate_workdir(gan_workdir, settings, **QUIET)
    assert second["reference"] == {**first["reference"], "cached": True}
    assert os.stat(path).st_mtime_ns == mtime  # read, not rewritten
    assert second["metrics"]["fid"] == first["metrics"]["fid"]  # same seed, same samples, same statistics

    params, meta, _ = clf.load_weights(clf.default_weights_path())  # altered weights -> new hash -> new cache entry
    params["logits"]["bias"] = params["logits"]["bias"] + 1e-3
    other = tmp_path / "other.npz"
    clf.save_weights(other, params, meta)
    third = ev.evaluate_workdir(gan_workdir, ev.EvalSettings(**SMALL, metrics=("fid",), weights=str(other)), **QUIET)
    assert third["extractor"]["weights_sha256"] != first["extractor"]["weights_sha256"]
    assert third["reference"]["cached"] is False and third["reference"]["path"] != path


def test_evaluator_draws_the_samples_synthjax_sample_exports(gan_run, cache):
    from synthjax.sample import generate, load_run

    config, trainer, state, _ = load_run(gan_run)
    evaluator = ev.Evaluator(config, trainer, ev.EvalSettings(**SMALL), **QUIET)
    np.testing.assert_array_equal(evaluator.generate(state), generate(trainer, state, 200, 0))


def test_reference_statistics_are_keyed_by_image_content_not_path(extractor, tmp_path):
    images = load_bundled_mnist()[0][:300]
    dataset = {"name": "npz", "path": "/data/a.npz", "split": "test"}
    a = reference.load_or_compute(dataset, lambda: images, extractor, root=tmp_path, **QUIET)
    b = reference.load_or_compute({**dataset, "path": "/elsewhere/copy.npz"}, lambda: images.copy(), extractor, root=tmp_path, **QUIET)
    assert not a.cached and b.cached and a.key == b.key  # the same images stored elsewhere: the same entry
    np.testing.assert_array_equal(a.sigma, b.sigma)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1  # one pixel differs: another key
    c = reference.load_or_compute(dataset, lambda: changed, extractor, root=tmp_path, **QUIET)
    assert not c.cached and c.key != a.key


def test_fid_of_real_data_is_zero_against_itself_and_large_against_noise(extractor):
    images = load_bundled_mnist()[0]
    real_a, real_b = extractor(images[:1000])["features"], extractor(images[1000:2000])["features"]
    noise = np.random.default_rng(0).integers(0, 256, (1000, 28, 28, 1), dtype=np.uint8)
    stats_a = gaussian_stats(real_a)
    assert abs(frechet_distance(*stats_a, *gaussian_stats(real_a))) < 1e-6
    real_vs_real = frechet_distance(*stats_a, *gaussian_stats(real_b))
    real_vs_noise = frechet_distance(*stats_a, *gaussian_stats(extractor(noise)["features"]))
    assert real_vs_noise > 20 * real_vs_real, (real_vs_real, real_vs_noise)


@pytest.fixture(scope="module")
def vae():
    """configs/vae_mlp.py:smoke trained for 30 steps (batch 64) on the test's 4 simulated devices."""
    from synthjax.parallel import DataParallel
    from synthjax.trainers import build_trainer

    # A constant rate: the 30 steps here should get as far as they can (the config's cosine decays to 0 over
    # train.num_steps, 6 in the smoke variant, and holds 0 after)
    config = load_config(os.path.join(REPO, "configs/vae_mlp.py:smoke"), ["train.batch_size=64", "opt.schedule=constant"])
    trainer = build_trainer(config, (28, 28, 1))
    dp = DataParallel("shard_map")
    images, rng = load_bundled_mnist()[0][bundled_split_indices("train")], np.random.default_rng(1)
    state = dp.put_state(jax.jit(trainer.create_state)(jax.random.key(0)))
    step = dp.compile_step(trainer.train_step)
    for i in range(30):
        batch = trainer.preprocess({"image": images[64 * i : 64 * (i + 1)], "label": None}, rng)
        state, _ = step(state, dp.put_batch({"image": batch["image"]}), jax.random.key(1))
    return config, trainer, dp, state


def test_vae_nll_is_an_iwae_bound_at_or_above_the_elbo(vae):
    config, trainer, dp, state = vae
    evaluator = ev.Evaluator(config, trainer, ev.EvalSettings(metrics=("nll",), iwae_k=64, nll_num=100), **QUIET)
    out = evaluator(state)
    assert set(out) == {"nll_nats", "nll_bits_per_dim"} and math.isfinite(out["nll_nats"])
    assert out["nll_bits_per_dim"] == pytest.approx(out["nll_nats"] / (784 * math.log(2)))
    assert out["nll_nats"] < 784 * math.log(2)  # better than a fair coin per pixel
    convention = evaluator.describe()["nll"]["convention"]
    assert "{0,1}^D" in convention and "k=64" in convention

    # The images the evaluator scored: the first 100 of the test split, binarised once with the evaluation seed.
    test_images = load_bundled_mnist()[0][bundled_split_indices("test")[:100]]
    x = trainer.preprocess({"image": test_images, "label": None}, np.random.default_rng(0))["image"]
    assert evaluator.describe()["nll"]["split"] == "test"
    eval_step = dp.compile_eval(trainer.eval_step)
    batch = dp.put_batch({"image": x})
    neg_elbo = np.mean([float(eval_step(state, batch, jax.random.key(k))["neg_elbo"]) for k in range(4)])
    # E[log IWAE_64] >= ELBO: the NLL bound is the tighter one (by nats here, far above the noise of 100 images).
    assert out["nll_nats"] <= neg_elbo, (out["nll_nats"], neg_elbo)


def test_bad_metric_names_list_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown metric\(s\) \['fdi'\]; valid: fid, kid, is, pr, nll"):
        ev.parse_metrics("fdi,kid")


def test_missing_weight_files_say_how_to_make_them(tmp_path):
    with pytest.raises(UserError, match=r"(?s)classifier weights not found at .*missing.npz.*python -m synthjax.metrics.classifier --out"):
        ev.load_extractor("mnist_classifier", str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match=r"(?s)FID Inception weights not found.*convert_inception"):
        ev.load_extractor("inception", str(tmp_path / "inception.npz"))
    with pytest.raises(UserError, match=r"unknown extractor 'vgg' \(--extractor\); valid: mnist_classifier, inception"):
        ev.validate_settings(ev.EvalSettings(extractor="vgg"))


def test_mnist_classifier_refuses_rgb_32x32_data(extractor):
    with pytest.raises(UserError, match=r"takes \(N, H, W, 1\) uint8 .*28x28.*'cifar10' has 32x32x3.*--extractor inception"):
        ev.check_compatible(extractor, (32, 32, 3), "cifar10")
    ev.check_compatible(extractor, (28, 28, 1), "mnist")


def test_too_few_samples_name_the_minimum(extractor):
    with pytest.raises(UserError, match=r"--num=50 is too few samples for fid .*at least 129; use --num >= 129"):
        ev.check_sample_counts(("kid", "fid"), 50, 10000, extractor)
    with pytest.raises(UserError, match=r"--num=5 is too few samples for is .*at least 10"):
        ev.check_sample_counts(("is",), 5, 10000, extractor)


def test_nll_on_a_gan_and_bad_eval_config_are_user_errors(gan_workdir, capsys):
    assert ev.main(["--workdir", gan_workdir, "--metrics", "fid,nll", "--num", "200"]) == 2
    assert "metric 'nll' needs a trainer with log_likelihood" in capsys.readouterr().err
    assert ev.main(["--workdir", gan_workdir, "--metrics", "fid,bogus"]) == 2
    assert "valid: fid, kid, is, pr, nll" in capsys.readouterr().err
    config = load_config(os.path.join(REPO, "configs/dcgan.py:smoke"), ["eval.every=2", "eval.num=0"])
    with pytest.raises(UserError, match="eval.num must be an integer >= 1; got 0"):
        ev.periodic_evaluator(config, trainer=None)


def test_sample_features_are_the_same_on_one_and_four_devices(gan_run, extractor):
    from synthjax.parallel import make_mesh
    from synthjax.sample import generate, load_run
    from synthjax.sample_features import SampleFeatures

    _, trainer, state, _ = load_run(gan_run)
    assert jax.device_count() == 4
    # 3 chunks of 100 (the last one short): three rounds on one device, one round with a padding chunk on four.
    one, four = (SampleFeatures(trainer, extractor, make_mesh(jax.devices()[:n]), chunk=100)(state, 250, 0) for n in (1, 4))
    assert one["features"].shape == four["features"].shape == (250, 128)
    np.testing.assert_allclose(four["features"], one["features"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(four["logits"], one["logits"], rtol=1e-6, atol=1e-6)
    for got, want in zip(four["stats"], one["stats"]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # ... and they are the features of the images synthjax.sample exports, with their float64 statistics.
    host = extractor(generate(trainer, state, 250, 0, batch=100))["features"]
    np.testing.assert_allclose(four["features"], host, rtol=1e-5, atol=1e-5)
    for got, want in zip(four["stats"], gaussian_stats(host)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_each_process_draws_its_own_chunks_and_together_all_of_them():
    from synthjax.sample_features import process_chunks, round_chunks

    # fid10k on 2 processes x 2 devices: 10 chunks of 1000 in 3 rounds of 4, two padding chunks at the end.
    assert round_chunks(10, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    first, second = (process_chunks(10, [0, 0, 1, 1], p) for p in (0, 1))
    assert first == [0, 1, 4, 5, 8, 9] and second == [2, 3, 6, 7, 10, 11]
    assert sorted(c for c in first + second if c < 10) == list(range(10))
    # fid50k on 4 processes x 8 devices: disjoint shares covering every chunk once.
    shares = [set(process_chunks(50, [d // 8 for d in range(32)], p)) for p in range(4)]
    assert sum(len(s) for s in shares) == 64 and set().union(*shares) == set(range(64))


def test_presets_fix_count_metrics_split_and_refuse_conflicting_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SYNTHJAX_CACHE", str(tmp_path))
    parse = lambda *flags: ev.parser().parse_args(["--workdir", "w", *flags])  # noqa: E731
    a = parse("--preset", "fid50k")
    record = ev.resolve_preset(a, **QUIET)
    assert (a.num, a.metrics, a.split, a.num_ref, a.extractor) == (50000, "fid,kid", "test", 0, "mnist_classifier")
    assert record == {"name": "fid50k", "num_samples": 50000, "extractor": "mnist_classifier"}
    (tmp_path / ev.INCEPTION_FILE).touch()  # Inception weights in the cache: the preset takes them
    a = parse("--preset", "fid10k", "--num", "10000", "--metrics", "kid,fid", "--seed", "3")
    ev.resolve_preset(a, **QUIET)
    assert (a.num, a.extractor, a.seed) == (10000, "inception", 3)  # same values and free flags are accepted
    a = parse("--preset", "fid10k", "--extractor", "mnist_classifier")
    assert ev.resolve_preset(a, **QUIET)["extractor"] == "mnist_classifier"  # an explicit extractor wins

    for flags, message in ((("--num", "5000"), "--num 5000 conflicts with --preset fid10k, which fixes --num 10000"),
                           (("--metrics", "fid,is"), "--metrics fid,is conflicts with --preset fid10k, which fixes --metrics fid,kid"),
                           (("--split", "train"), "--split train conflicts with --preset fid10k, which fixes --split test"),
                           (("--num-ref", "500"), "--num-ref 500 conflicts with --preset fid10k")):
        assert ev.main(["--workdir", str(tmp_path), "--preset", "fid10k", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert ev.main(["--workdir", str(tmp_path), "--preset", "fid5k"]) == 2
    assert "unknown preset 'fid5k' (--preset); valid: fid10k, fid50k" in capsys.readouterr().err


def test_preset_run_end_to_end(gan_workdir, cache, capsys):
    argv = ["--workdir", gan_workdir, "--preset", "fid10k", "--preset-num-samples", "200"]
    assert ev.main(argv) == 0, capsys.readouterr().err
    saved = json.load(open(os.path.join(gan_workdir, "eval.json")))
    assert saved["preset"] == {"name": "fid10k", "num_samples": 10000, "extractor": "mnist_classifier", "reduced_num_samples": 200}
    assert saved["num_samples"] == 200 and saved["metrics_requested"] == ["fid", "kid"]
    assert set(saved["metrics"]) == {"fid", "kid", "kid_std"} and saved["metrics"]["fid"] > 0
    assert saved["split"] == "test" and saved["reference"]["num"] == 2000  # the whole bundled test split
    assert saved["devices"] == 4 and saved["processes"] == 1
    # Four devices give the FID of the images synthjax.sample exports, extracted on the host as the training loop does.
    from synthjax.sample import load_run

    config, trainer, state, _ = load_run(gan_workdir)
    host = ev.Evaluator(config, trainer, ev.EvalSettings(num=200, metrics=("fid",)), **QUIET)(state)
    assert host["fid"] == pytest.approx(saved["metrics"]["fid"], rel=1e-5)


class _ChannelMeans(FeatureExtractor):
    """RGB features of any size: per-channel means and one product, on the host (no device form)."""

    def extract_batch(self, images):
        x = np.asarray(images, np.float32) / 255.0
        means = x.mean(axis=(1, 2))
        return {"features": np.concatenate([means, means[:, :1] * means[:, 1:2]], axis=1), "logits": None}


class _ChannelMeansOnDevice(_ChannelMeans):
    def device_form(self):
        def fn(scale, images):
            means = images.astype(jax.numpy.float32).mean(axis=(1, 2)) / 255.0 * scale
            return {"features": jax.numpy.concatenate([means, means[:, :1] * means[:, 1:2]], axis=1), "logits": None}

        return fn, np.float32(1.0)


@pytest.mark.parametrize("kind", [_ChannelMeans, _ChannelMeansOnDevice])
def test_sample_features_of_other_extractors_match_the_host_path(gan_run, kind):
    """Host fallback and a device form whose batch (30) does not divide the chunk; grey samples repeated to RGB."""
    from synthjax.parallel import make_mesh
    from synthjax.sample import generate, load_run
    from synthjax.sample_features import SampleFeatures

    _, trainer, state, _ = load_run(gan_run)
    extractor = kind("channel-means", "none", InputSpec(channels=3), batch_size=30)
    got = SampleFeatures(trainer, extractor, make_mesh(), chunk=100)(state, 150, 1)
    want = extractor(ev.to_extractor_input(generate(trainer, state, 150, 1, batch=100), extractor))["features"]
    assert set(got) == {"features", "stats"}
    np.testing.assert_allclose(got["features"], want, rtol=1e-5, atol=1e-6)  # XLA sums the means in another order


@pytest.mark.slow  # two subprocesses: about 30 s on a 2-core CPU
def test_two_processes_gather_the_statistics_of_one(gan_workdir, cache, tmp_path):
    """Two evaluate processes with two CPU devices each, joined by jax.distributed: the FID and KID of one process
    with four devices (each process draws its chunks; the features are gathered before the statistics)."""
    import portpicker
    from helpers import runs

    argv = ["-m", "synthjax.evaluate", "--workdir", gan_workdir, "--preset", "fid10k", "--preset-num-samples", "2100"]
    single = str(tmp_path / "single.json")
    assert ev.main(argv[2:] + ["--out", single]) == 0
    address, env = f"localhost:{portpicker.pick_unused_port()}", runs.jax_env(devices=2, SYNTHJAX_CACHE=str(cache))
    procs = [runs.start([sys.executable, *argv, "--out", str(tmp_path / f"multi{i}.json"), "--coordinator-address",
                         address, "--num-processes", "2", "--process-id", str(i)], env=env, log=str(tmp_path / f"multi{i}.log"))
             for i in range(2)]
    try:
        for i, p in enumerate(procs):
            assert p.wait(timeout=240) == 0, runs.tail(str(tmp_path / f"multi{i}.log"))
    finally:
        runs.sigkill(procs)  # never leave a partner blocked in a collective
    assert not (tmp_path / "multi1.json").exists()  # process 0 writes eval.json
    got, want = json.load(open(tmp_path / "multi0.json")), json.load(open(single))
    assert (got["processes"], got["devices"], got["num_samples"]) == (2, 4, 2100)
    for key in ("fid", "kid", "kid_std"):
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], rel=1e-5), key
