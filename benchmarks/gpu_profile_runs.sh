#!/usr/bin/env bash
# One device slot: the image layers in the block-aligned formulations (`in=s2d3x3`, `out=subpixel3x3`: no
# interleave between generator and discriminator) against the defaults, per reference workload, beside the
# PyTorch peer (eager, bf16 autocast, torch.compile for the f32 cases the issue judges against it); dcgan64
# b256 bf16 profiled; then the family table with the current defaults. Each part appends its own JSON.
# Usage (device machine, repo root): bash benchmarks/gpu_profile_runs.sh OUT_DIR PATH/torch_peer.py
out=${1:-/tmp/gpu_profile}; peer=${2:-}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
P="python3 benchmarks/gpu_profile.py --out $out/profile.jsonl --peer $peer"
V=(--variant base: --variant in3:model.conv_impl=in=s2d3x3 --variant "sp3in3:model.conv_impl=out=subpixel3x3,in=s2d3x3")
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
timeout 150 $P --workload dcgan64 --batch-size 256 --dtype bfloat16 --rounds 5 --profile base,best --hlo-dir "$out" "${V[@]}"
timeout 200 $P --workload dcgan64 --batch-size 256 --dtype float32 --peer-compile "${V[@]}"
timeout 200 $P --workload dcgan28 --batch-size 1024 --dtype float32 --peer-compile "${V[@]}"
timeout 120 $P --workload dcgan28 --batch-size 128 --dtype float32 "${V[@]}"
timeout 120 $P --workload dcgan64 --batch-size 1024 --dtype bfloat16 "${V[@]}"
timeout 240 python3 benchmarks/gpu_suite.py --peer "$peer" --cases none --layers none --budget-s 200 --out "$out/families.json"
