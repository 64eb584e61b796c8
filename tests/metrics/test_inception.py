"""FID Inception in Flax: weight loading errors, converter checks, and parity with an independent torch model."""

import hashlib

import jax.numpy as jnp
import numpy as np
import pytest

from synthjax import metrics
from synthjax.errors import UserError
from synthjax.metrics import convert_inception, inception
from tests.fixtures import make_inception, make_resize


def test_missing_weights_name_the_path_and_the_conversion_command(tmp_path):
    path = tmp_path / "nowhere" / "inception_fid.npz"
    with pytest.raises(FileNotFoundError, match="convert_inception --torch pt_inception-2015-12-05-6726825d.pth") as e:
        metrics.InceptionFeatureExtractor.from_npz(path)
    assert str(path) in str(e.value)


def _zero_state_dict():
    # a pytorch-fid style state dict (torch layouts) built from the Flax shapes
    sd = {}
    for key, shape in inception.expected_variable_shapes().items():
        collection, *modules, leaf = key.split("/")
        prefix = ".".join(modules)
        if leaf == "kernel" and modules[-1] == "conv":
            sd[f"{prefix}.weight"] = np.zeros(tuple(shape[i] for i in (3, 2, 0, 1)), np.float32)
        elif leaf == "kernel":
            sd[f"{prefix}.weight"] = np.zeros(shape[::-1], np.float32)
        else:
            name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
            sd[f"{prefix}.{name}"] = np.zeros(shape, np.float32)
        if leaf == "var":
            sd[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    return sd


def test_converter_accepts_a_complete_state_dict_and_rejects_broken_ones():
    sd = _zero_state_dict()
    assert len(convert_inception.convert_state_dict(sd)) == 472
    missing = dict(sd)
    del missing["Mixed_7c.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match=r"missing \(1\): \['batch_stats/Mixed_7c/branch_pool/bn/var'\]"):
        convert_inception.convert_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected state-dict key 'AuxLogits.fc.weight'"):
        convert_inception.convert_state_dict({**sd, "AuxLogits.fc.weight": np.zeros((1000, 768))})
    wrong = {**sd, "fc.weight": np.zeros((1000, 2048), np.float32)}
    with pytest.raises(ValueError, match=r"wrong shape \(1\): \['params/fc/kernel'\]"):
        convert_inception.convert_state_dict(wrong)


def test_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for h, w in [(32, 40), (350, 320)]:  # up- and down-sampling (no antialiasing in either library)
        x = rng.random((2, h, w, 3), dtype=np.float32)
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear", align_corners=False
        )
        got = np.asarray(inception.resize_bilinear_like_torch(jnp.asarray(x)))
        np.testing.assert_allclose(got, expected.permute(0, 2, 3, 1).numpy(), atol=2e-6)


def test_resize_matches_the_committed_torch_reference():
    """The check above from tests/fixtures/resize_bilinear.npz (made by make_resize.py), so CI needs no torch."""
    fixture = np.load(make_resize.PATH)
    for h, w in make_resize.SIZES:
        got = np.asarray(inception.resize_bilinear_like_torch(jnp.asarray(make_resize.inputs(h, w))))
        np.testing.assert_allclose(got, fixture[f"{h}x{w}"], atol=2e-6, err_msg=f"{h}x{w}")


def test_flax_inception_matches_independent_torch_implementation(tmp_path, capsys):
    """The optional live check; the fixture twin below runs the same comparison without torch."""
    torch = pytest.importorskip("torch")
    model = make_inception.randomised_torch_model()
    pth, npz = tmp_path / "random_inception.pth", tmp_path / "inception_fid.npz"
    torch.save(model.state_dict(), pth)
    assert convert_inception.main(["--torch", str(pth), "--out", str(npz)]) == 0
    extractor = metrics.InceptionFeatureExtractor.from_npz(npz)
    assert extractor.weights_hash == hashlib.sha256(npz.read_bytes()).hexdigest()

    images = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)  # resized up to 299
    with torch.no_grad():
        pool, logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    assert_matches_torch(extractor(images), pool.numpy(), logits.numpy(), model.fc.bias.detach().numpy(), capsys)


def test_flax_inception_matches_the_committed_torch_reference(tmp_path, capsys):
    """The same comparison from tests/fixtures/inception_random.npz (made by make_inception.py), so CI needs no torch."""
    fixture = np.load(make_inception.PATH)
    state = {k.removeprefix("state/"): fixture[k] for k in fixture.files if k.startswith("state/")}
    flat = convert_inception.convert_state_dict({**make_inception.torch_layout_weights(), **state})
    npz = tmp_path / "inception_fid.npz"
    np.savez(npz, **flat)
    extractor = metrics.InceptionFeatureExtractor.from_npz(npz)
    out = extractor(fixture["images"])
    assert_matches_torch(out, fixture["pool"], fixture["logits"], state["fc.bias"], capsys)


def assert_matches_torch(out: dict, pool: np.ndarray, logits: np.ndarray, bias: np.ndarray, capsys) -> None:
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert (pool > 0).mean() > 0.5  # activations did not die: the comparison is not 0 == 0
    rel_err = np.abs(out["features"] - pool).max() / np.abs(pool).max()
    with capsys.disabled():
        print(f"\nFID Inception flax vs torch: max |pool diff| / max |pool| = {rel_err:.2e}")
    np.testing.assert_allclose(out["features"], pool, rtol=1e-4, atol=1e-4 * np.abs(pool).max())
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    np.testing.assert_allclose(out["logits_unbiased"], logits - bias, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


def test_converter_cli_reports_a_missing_torch_file(tmp_path, capsys):
    code = convert_inception.main(["--torch", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "out.npz")])
    assert code == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()


def test_fetch_downloads_checks_and_converts_through_a_file_url(tmp_path, capsys):
    """`python -m synthjax.metrics.inception fetch` offline: a local pytorch-fid style .pth through file://."""
    torch = pytest.importorskip("torch")
    fixture = tmp_path / "pt_inception-fixture.pth"
    torch.save({k: torch.from_numpy(v) for k, v in _zero_state_dict().items()}, fixture)
    digest = inception.file_sha256(fixture)
    url, out = fixture.as_uri(), tmp_path / "cache" / "inception_fid.npz"

    assert inception.main(["fetch", "--url", url, "--sha256", "0" * 64, "--out", str(out)]) == 2
    assert f"has sha256 {digest}, expected 0000" in capsys.readouterr().err and not out.exists()
    assert not [p for p in out.parent.iterdir()]  # no partial files left behind

    assert inception.main(["fetch", "--url", url, "--sha256", digest[:12], "--out", str(out)]) == 0
    variables, npz_hash = inception.load_inception_variables(out)
    assert "Mixed_7c" in variables["params"] and len(npz_hash) == 64
    # Cached: a second fetch does not download (the URL is gone) and keeps the file.
    fixture.unlink()
    assert inception.main(["fetch", "--url", url, "--out", str(out)]) == 0
    assert "already at" in capsys.readouterr().out
    assert inception.main(["fetch", "--url", url, "--out", str(tmp_path / "other.npz")]) == 2
    assert "cannot download file://" in capsys.readouterr().err


@pytest.mark.parametrize("size", [32, 600])
def test_clean_resize_matches_pil_bicubic(size):
    from PIL import Image

    x = np.random.default_rng(0).integers(0, 256, (size, size - 17)).astype(np.float32)
    ref = np.asarray(Image.fromarray(x, mode="F").resize((299, 299), resample=Image.BICUBIC))
    got = np.asarray(inception.resize_clean(jnp.asarray(x / 255.0)[None, ..., None]))[0, ..., 0] * 255.0
    inner = slice(2, -2)  # PIL clips to [0, 255] only afterwards; interior values are unclipped on both sides
    np.testing.assert_allclose(np.clip(got, 0, 255)[inner, inner], np.clip(ref, 0, 255)[inner, inner], atol=0.02)


def test_resize_option_is_named_in_the_extractor(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **convert_inception.convert_state_dict(_zero_state_dict()))
    default = metrics.InceptionFeatureExtractor.from_npz(path)
    clean = metrics.InceptionFeatureExtractor.from_npz(path, resize="clean")
    assert default.name == "inception-v3-fid-2015-12-05" and clean.name.endswith("-resize-clean")
    with pytest.raises(UserError, match="unknown resize 'area'; valid: pytorch_fid, clean"):
        metrics.InceptionFeatureExtractor.from_npz(path, resize="area")
