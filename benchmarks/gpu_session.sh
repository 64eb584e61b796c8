#!/usr/bin/env bash
# One device slot for the GPU rows of docs/performance.md: the loop against the bench step and stacks against
# members one by one (gpu_loop_stacks.py), then the step suite beside the PyTorch peer (gpu_suite.py).
# Usage (device machine, repo root, wheels of the packages its image lacks in .whl/):
#   bash benchmarks/gpu_session.sh OUT_DIR PATH/torch_peer.py LOOP_BUDGET_S SUITE_BUDGET_S [CASES, e.g. 0:7]
out=$1; peer=$2; loop_budget=${3:-300}; suite_budget=${4:-0}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# Rounds and processes reuse compilations (the loop's rounds compile the same programs).
export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import jax, flax, optax, chex, orbax.checkpoint as o, grain, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'chex', chex.__version__, 'orbax', o.__version__, 'grain', grain.__version__, 'torch', torch.__version__, jax.devices())" 2>&1 | tee "$out/versions.txt"
# The loop writes orbax checkpoints: if the image's orbax cannot, use the tested release carried in .whl/orbax.
if [ "${SMOKE:-1}" = 1 ] && ! timeout 120 python3 train.py --config configs/gan_mlp.py:smoke --workdir /tmp/smoke > "$out/smoke.log" 2>&1; then
  tail -5 "$out/smoke.log"; echo "smoke run failed with the image's orbax; trying the carried one"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/orbax/*.whl
  rm -rf /tmp/smoke; timeout 120 python3 train.py --config configs/gan_mlp.py:smoke --workdir /tmp/smoke > "$out/smoke.log" 2>&1 || { tail -20 "$out/smoke.log"; exit 1; }
fi
timeout $((loop_budget + 120)) python3 benchmarks/gpu_loop_stacks.py --out "$out/loop_stacks.jsonl" --budget-s "$loop_budget" --cases "${5:-:}" 2> "$out/loop_stacks.log"
if [ "$suite_budget" -gt 0 ]; then
  timeout $((suite_budget + 90)) python3 benchmarks/gpu_suite.py --peer "$peer" --layers none --budget-s "$suite_budget" --out "$out/suite.json" ${SUITE_ARGS:-} 2> "$out/suite.log" | tail -40
fi
echo "== loop and stacks"; python3 - "$out/loop_stacks.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    name = f"{r['workload']} b{r['batch_size']} {r['dtype']} {' '.join(r['overrides'])}"
    if "error" in r: print(f"{r['kind']:7s} {name:50s} FAILED {r['error'][:120]}")
    elif r["kind"] == "loop": print(f"loop    {name:50s} K={r['steps_per_call']} loop {r['loop_images_per_sec']:9.0f} bench {r['bench_images_per_sec']:9.0f} {r['loop_vs_bench']:.3f}")
    else: print(f"members {name:50s} x{r['members']} stack {r['images_per_sec']:9.0f} seq {r['sequential_images_per_sec']:9.0f} {r['speedup_vs_sequential']:.2f}x")
PY
