#!/usr/bin/env bash
# One device slot: dcgan64 b256 bf16's step profiled on the GPU, the up-convolution formulations and the
# joint discriminator pass compared per workload, beside the PyTorch peer's eager step (and bf16 autocast).
# Usage (device machine, repo root): bash benchmarks/gpu_profile_runs.sh OUT_DIR PATH/torch_peer.py
out=${1:-/tmp/gpu_profile}; peer=${2:-}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
P="timeout 170 python3 benchmarks/gpu_profile.py --out $out/profile.jsonl --peer $peer"
J="model.d_joint_pass=true"
C="$J;model.conv_impl"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
$P --workload dcgan64 --batch-size 256 --dtype bfloat16 --profile best --hlo-dir "$out" \
  --variant base: --variant joint:$J --variant j_dgrad:"$C=up=dgrad" --variant j_dgrad2:"$C=up=dgrad,out=dgrad" \
  --variant j_dgrad_col:"$C=up=dgrad,out=gemm_col2im" --variant j_subpixel:"$C=up=subpixel" \
  --variant j_subpixel2:"$C=up=subpixel,out=subpixel" --variant j_col:"$C=out=gemm_col2im" --variant j_convvjp:"$C=up=conv_vjp"
for case in "dcgan28 1024 float32" "dcgan64 256 float32" "dcgan28 128 float32" "dcgan64 1024 bfloat16"; do
  set -- $case
  $P --workload $1 --batch-size $2 --dtype $3 --variant base: --variant joint:$J --variant j_dgrad:"$C=up=dgrad" \
    --variant j_dgrad2:"$C=up=dgrad,out=dgrad" --variant j_dgrad_col:"$C=up=dgrad,out=gemm_col2im" \
    --variant j_subpixel2:"$C=up=subpixel,out=subpixel"
done
