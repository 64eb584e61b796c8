"""Convert pytorch-fid's FID Inception weights to the npz that `synthjax.metrics.inception` loads.

    python -m synthjax.metrics.convert_inception \\
        --torch pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

Only reading the .pth needs torch (the CPU build is enough); the mapping itself
is numpy. Keys map one to one, because the Flax modules carry pytorch-fid's
names: `X.conv.weight` (O, I, kH, kW) -> `params/X/conv/kernel` (kH, kW, I, O);
`X.bn.{weight, bias}` -> `params/X/bn/{scale, bias}`;
`X.bn.running_{mean, var}` -> `batch_stats/X/bn/{mean, var}`; `fc.weight`
(1008, 2048) -> `params/fc/kernel` (2048, 1008). `num_batches_tracked` is
dropped. The result is checked against the Flax model's variable shapes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from synthjax.errors import UserError
from synthjax.metrics._checks import MetricInputError
from synthjax.metrics.inception import check_variable_shapes, file_sha256

_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _convert_entry(key: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
    """Map one pytorch-fid state-dict entry to (flat flax key, array), or None for bookkeeping entries."""
    *modules, leaf = key.split(".")
    if leaf == "num_batches_tracked":
        return None
    path = "/".join(modules)
    if modules and modules[-1] == "conv" and leaf == "weight":
        return f"params/{path}/kernel", np.transpose(value, (2, 3, 1, 0))
    if modules and modules[-1] == "bn" and leaf in _BN_LEAVES:
        collection, name = _BN_LEAVES[leaf]
        return f"{collection}/{path}/{name}", value
    if modules == ["fc"] and leaf == "weight":
        return "params/fc/kernel", value.T
    if modules == ["fc"] and leaf == "bias":
        return "params/fc/bias", value
    raise MetricInputError(f"unexpected state-dict key {key!r}: not part of pytorch-fid's FID Inception")


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Convert a pytorch-fid FID Inception state dict (numpy values) to flat float32 flax variables.

    Keys of the result are 'collection/module/.../leaf' (the npz layout); the
    set of keys and every shape are checked against `FIDInceptionV3`, so a
    torchvision Inception or a truncated file is rejected with a list of what
    is missing or unexpected.
    """
    flat = {}
    for key, value in state_dict.items():
        entry = _convert_entry(key, np.asarray(value))
        if entry is not None:
            flat[entry[0]] = np.ascontiguousarray(entry[1], dtype=np.float32)
    check_variable_shapes(flat, "the state dict")
    return flat


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a .pth state dict with torch (weights only, on CPU) and return numpy arrays."""
    try:
        import torch
    except ImportError as e:
        raise UserError("converting the .pth needs torch: pip install torch (the CPU build is enough)") from e
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _warn_if_hash_mismatch(path: Path) -> str:
    """Return the file's sha256; warn when a torch-hub style '-<hex>.pth' name promises another."""
    digest = file_sha256(path)
    match = re.search(r"-([0-9a-f]{8,})\.pth$", path.name)
    if match and not digest.startswith(match.group(1)):
        message = f"warning: {path.name} has sha256 {digest[:16]}..., not the {match.group(1)} its name says"
        print(message, file=sys.stderr)
    return digest


def convert_file(torch_path: str | Path, out_path: str | Path) -> str:
    """Convert a pytorch-fid .pth file to an npz of flax variables; return the npz's sha256."""
    torch_path, out_path = Path(torch_path), Path(out_path)
    if not torch_path.is_file():
        raise UserError(f"no such file: {torch_path} (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    _warn_if_hash_mismatch(torch_path)
    flat = convert_state_dict(load_torch_state_dict(torch_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as f:  # a file object: np.savez would otherwise append '.npz'
        np.savez(f, **flat)
    return file_sha256(out_path)


PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
# torch.hub's convention: the hex after the last '-' of the file name starts the file's sha256.
PYTORCH_FID_SHA256_PREFIX = "6726825d"


def fetch(out: str | Path, url: str = PYTORCH_FID_URL, sha256: str = PYTORCH_FID_SHA256_PREFIX, log=print) -> tuple[Path, str]:
    """Download pytorch-fid's Inception weights from `url`, check their sha256, convert them to `out`.

    `sha256` is the expected hex digest of the downloaded .pth, or its start
    (the default is the prefix pytorch-fid's file name carries). An existing
    `out` is kept (the cache); a download whose hash differs is deleted and
    refused. Any urllib URL works, `file://` included (the offline tests use
    one). Converting needs torch (`pip install torch`, the CPU build).
    Returns (out, sha256 of the npz: the extractor's weights_hash).
    """
    import tempfile
    import urllib.request

    out = Path(out).expanduser()
    if out.is_file():
        log(f"synthjax: FID Inception weights already at {out}")
        return out, file_sha256(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pth = Path(tmp) / "weights.pth"
        log(f"synthjax: downloading {url}")
        try:
            with urllib.request.urlopen(url) as response, open(pth, "wb") as f:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
        except OSError as e:  # URLError, HTTPError and file errors are all OSErrors
            raise UserError(f"cannot download {url}: {e}; download it by hand and run {CONVERT_HINT}") from None
        digest = file_sha256(pth)
        if not digest.startswith(sha256.lower()):
            raise UserError(f"{url} has sha256 {digest}, expected {sha256}...: a different or damaged file; nothing was written")
        npz_hash = convert_file(pth, out.with_name(f".{out.name}.partial"))
        out.with_name(f".{out.name}.partial").replace(out)
    log(f"synthjax: converted FID Inception weights -> {out} (sha256 {npz_hash})")
    return out, npz_hash


CONVERT_HINT = "python -m synthjax.metrics.convert_inception --torch FILE.pth --out OUT.npz"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the output path and its sha256 (the extractor's weights_hash)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", required=True, help="pytorch-fid state dict, pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--out", required=True, help="output .npz of flax variables")
    args = parser.parse_args(argv)
    try:
        digest = convert_file(args.torch, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
