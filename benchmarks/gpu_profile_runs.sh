#!/usr/bin/env bash
# One device slot: where dcgan64 b256 bf16's step time goes on the GPU and which variants help.
# Usage (device machine, repo root; wheels as in benchmarks/RESULTS.md): bash benchmarks/gpu_profile_runs.sh $OUT
out=${1:-/tmp/gpu_profile}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
P="timeout 150 python3 benchmarks/gpu_profile.py --out $out/profile.jsonl"
J="model.d_joint_pass=true"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"
$P --workload dcgan64 --batch-size 256 --dtype bfloat16 --profile base,joint --hlo-dir "$out" \
  --variant base: --variant joint:$J --variant native:model.conv_impl=native \
  --variant joint_native:"$J;model.conv_impl=native" --variant joint_upnative:"$J;model.conv_impl=up=native"
for flags in "--xla_gpu_enable_command_buffer=" "--xla_gpu_graph_min_graph_size=1"; do
  XLA_FLAGS="$flags" $P --workload dcgan64 --batch-size 256 --dtype bfloat16 --tag "$flags" --variant base: --variant joint:$J
done
for case in "dcgan28 1024 float32" "dcgan28 128 float32" "dcgan64 256 float32" "dcgan64 1024 bfloat16"; do
  set -- $case
  $P --workload $1 --batch-size $2 --dtype $3 --variant base: --variant joint:$J
done
