"""The benchmark entry points run and report what the spec asks for (figures themselves are not tested)."""
import json
import os
import subprocess
import sys

import numpy as np

from synthjax import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_KEYS = {"images_per_sec", "step_ms", "warmup_s"}


def test_bench_record_has_the_peer_keys_and_ours():
    r = bench.run("dcgan28", 8, 2, warmup=1, overrides=["model.g_width=8", "model.d_width=8"])
    assert PEER_KEYS | {"compile_s", "device", "dtype", "step_memory_bytes"} <= set(r)
    assert r["images_per_sec"] > 0 and r["finite"] and r["step_memory_bytes"] > 0
    assert r["overrides"] == ["model.g_width=8", "model.d_width=8"]
    assert_names_the_code_path(r)


def assert_names_the_code_path(r: dict, roles=("up", "out", "down", "in")) -> None:
    """A record says which convolution formulation ran per layer role, and the CPU tuning applied."""
    assert set(roles) <= set(r["convolutions"]) and "tuning" in r, sorted(r)


def test_bench_members_prints_one_json_line_with_the_stack_and_sequential_rates():
    proc = subprocess.run(
        [sys.executable, "-m", "synthjax.bench", "--workload", "dcgan28", "--members", "2", "--batch-size", "8", "--steps", "2",
         "--set", "model.g_width=8", "--set", "model.d_width=8", "--json"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["members"] == 2 and r["images_per_sec"] > 0 and r["sequential_images_per_sec"] > 0 and r["finite"]
    assert abs(r["speedup_vs_sequential"] - r["images_per_sec"] / r["sequential_images_per_sec"]) < 1e-9
    assert r["stack_overrides"] == "model.conv_impl=stack"  # what the stack applied: dcgan's choice for CPU stacks
    assert_names_the_code_path(r)
    assert r["stack_convolutions"]["out"].startswith("gemm_col2im") and r["convolutions"]["out"].startswith("gemm_vjp")


def test_bench_loop_prints_one_json_line_with_the_loop_and_bench_rates():
    proc = subprocess.run(
        [sys.executable, "-m", "synthjax.bench", "--workload", "vae_mlp", "--loop", "--steps", "6", "--rounds", "1",
         "--set", "train.log_every=2", "--set", "train.sample_every=3", "--set", "train.ckpt_every=3",
         "--set", "train.num_grid=4", "--json"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # the run's own output goes to stderr
    r = json.loads(lines[0])
    assert r["steps"] == 6 and r["loop_images_per_sec"] > 0 and r["bench_images_per_sec"] > 0
    assert abs(r["loop_vs_bench"] - r["loop_images_per_sec"] / r["bench_images_per_sec"]) < 1e-9
    assert r["data_on_device"] and not r["synthetic_data"] and r["steps_per_call"] == 8  # configs/vae_mlp.py's
    # host seconds of the cadence actions before the last log line (steps 2-4): where a slow loop loses time
    assert set(r["rounds_cadence_seconds"][0]) == {"log", "checkpoint", "grids"}
    assert_names_the_code_path(r)


def test_bench_loop_gives_workloads_without_offline_data_a_synthetic_split(tmp_path):
    config, shape = bench.workload_config("dcgan64", 8, "float32")
    overrides = bench.loop_data(config, shape, str(tmp_path))
    assert overrides[0] == "data.name=npz" and "data.image_size=64" in overrides
    with np.load(tmp_path / "images.npz") as f:
        assert f["images"].shape == (bench.LOOP_DATA_IMAGES, 64, 64, 3) and f["images"].dtype == np.uint8
    mnist, mnist_shape = bench.workload_config("vae_mlp", 8, "float32")
    assert bench.loop_data(mnist, mnist_shape, str(tmp_path)) == []  # the bundled digits have the shape


def test_bench_shapes_tfds_workloads_without_their_data():
    config, shape = bench.workload_config("sngan", 0, "float32")  # CIFAR-10 through tfds: not on this machine
    assert shape == (32, 32, 3) and config.train.batch_size == bench.default_batch_size("sngan")


def test_gpu_suite_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--quick", "--peer", "", "--layers", "dcgan28.in",
         "--cases", "vae_mlp:16:float32", "--families", "", "--budget-s", "120", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["layer"] for r in result["layers"]] == ["dcgan28.in"]
    assert result["layers"][0]["fastest"] in result["layers"][0]["ms"]
    (row,) = result["steps"]
    assert row["workload"] == "vae_mlp" and row["img_s"]["synthjax:auto"] > 0
    assert "## Train steps" in proc.stdout


def test_gpu_profile_times_variants_and_traces_the_fastest_on_cpu(tmp_path):
    out, small = tmp_path / "profile.jsonl", "model.g_width=8;model.d_width=8"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_profile.py", "--workload", "dcgan28", "--batch-size", "8", "--dtype", "float32",
         "--variant", f"two:{small};model.d_joint_pass=off", "--variant", f"joint:{small};model.d_joint_pass=on",
         "--rounds", "2", "--round-s", "0.05", "--trace-steps", "2", "--profile", "best", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    rows = {r["variant"]: r for r in record["variants"]}
    assert set(rows) == {"two", "joint"} and rows["two"]["speedup_vs_first"] == 1.0
    assert all(len(r["rounds_ms"]) == 2 and r["step_ms"] > 0 for r in rows.values())
    fastest = min(rows, key=lambda n: rows[n]["step_ms"])
    assert list(record["profiles"]) == [fastest] and record["profiles"][fastest]["traced_wall_ms_per_step"] > 0
    assert "| joint |" in proc.stdout


def test_gpu_profile_counts_overlapping_kernels_once():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import gpu_profile

    assert gpu_profile._union_ns([(0, 10), (5, 20), (30, 40), (32, 35)]) == 30
    assert gpu_profile.kernel_kind("sm90_xmma_dgrad_implicit_gemm_bf16") == "convolution (cuDNN)"
    assert gpu_profile.kernel_kind("nvjet_sm90_tst_128x128") == "GEMM"
    assert gpu_profile.kernel_kind("loop_transpose_fusion_4") == "transpose/copy"
    assert gpu_profile.kernel_kind("input_multiply_reduce_fusion_1") == "reduction fusion"


def test_compare_runs_both_sides_under_each_allocator_setting_and_takes_each_sides_best():
    """On CPU both sides run under each of synthjax's glibc settings, and per round each side's best run counts;
    the default config's own ratio is kept beside it."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import compare

    envs = [env for _, env in compare.peer_variants("float32", "cpu", False)]
    assert envs == [{}, {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
                    {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}]
    assert [env for _, env in compare.peer_variants("float32", "cuda", False)] == [{}]
    assert compare.ours_variants("cpu") == [[], ["--set", "train.cpu_allocator=heap"],
                                            ["--set", "train.cpu_allocator=default"]]
    assert compare.ours_variants("cuda") == [[]]
    case = ("dcgan28", 128, "float32")
    rec = lambda r, who, ips, variant="": {"round": r, "who": who, "variant": variant, "case": list(case),  # noqa: E731
                                           "result": {"images_per_sec": ips, "compile_s": 1.0}}
    records = [rec(0, "synthjax", 100), rec(0, "synthjax", 110, "heap"), rec(0, "torch", 80), rec(0, "torch", 125, "malloc"),
               rec(1, "synthjax", 90), rec(1, "synthjax", 85, "heap"), rec(1, "torch", 100), rec(1, "torch", 90, "malloc")]
    (row,) = compare.summarise(records, [case], 2)
    assert row["median_ratio"] == (110 / 125 + 90 / 100) / 2
    assert row["median_ratio_default_only"] == (100 / 125 + 90 / 100) / 2
    assert row["torch_img_s_by_variant"] == {"eager": 90, "malloc": 107.5}
    assert row["synthjax_img_s_by_variant"] == {"default config": 95, "heap": 97.5}


def test_cli_batch_size_defaults_to_the_spec_or_the_config():
    from synthjax import bench

    assert bench.cli_batch_size("dcgan28", 0) == 128 and bench.cli_batch_size("vae_mlp", 0) == 128
    assert bench.cli_batch_size("wgan_gp", 0) == 320  # its config's: a multiple of n_critic=5
    assert bench.cli_batch_size("wgan_gp", 64) == 64


def test_a_runs_closing_line_shows_the_bench_figure_of_its_step(tmp_path):
    """`--workload NAME.py` benches the config file itself (vae_mlp alone is the spec's smaller VAE), and a
    train.py run of that config on the same devices then states that figure beside its own throughput."""
    from tests.helpers import runs

    env = runs.jax_env(SYNTHJAX_CACHE=str(tmp_path / "cache"))
    bench_run = subprocess.run(
        [sys.executable, "-m", "synthjax.bench", "--workload", "vae_mlp.py:smoke", "--steps", "2", "--warmup", "1", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert bench_run.returncode == 0, bench_run.stderr[-3000:]
    figure = json.loads(bench_run.stdout.strip().splitlines()[-1])["images_per_sec"]
    run = runs.run(runs.train_args("vae_mlp.py:smoke", str(tmp_path / "run"), "--config.train.num_steps=2"), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"(bench step: {figure:.0f} img/s, cpu:" in run.stdout.strip().splitlines()[-1], run.stdout[-1000:]


def test_a_py_name_is_the_config_file_even_where_a_reference_workload_has_its_stem():
    spec, _ = bench.workload_config("vae_mlp", 0, "float32")
    config, shape = bench.workload_config("vae_mlp.py", 0, "float32")
    assert (spec.model.latent, config.model.latent) == (20, 50) and shape == (28, 28, 1)
    assert bench.cli_batch_size("vae_mlp.py", 0) == config.train.batch_size
