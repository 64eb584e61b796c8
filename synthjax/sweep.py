"""Ablation grids: train every combination of some config values, and tabulate and plot the results.

    python -m synthjax.sweep --config configs/dcgan.py --sweep 'objective.loss=ns,hinge' --sweep 'seed=0:4' \\
        --workdir runs/loss_ablation [--metric d_loss] [--vmap [AXES]] [--config.KEY=VALUE ...]

`--sweep KEY=V1,V2,...` adds an axis (`KEY=A:B[:STEP]` is range(A, B[, STEP])
for integer keys; `KEY=V1|V2` separates values that contain commas, e.g.
`'objective.diffaugment=|color,translation,cutout'`); the grid is their product. Without --sweep the config
file's `get_sweep()` gives the axes (a dict of key -> list of values). Every
run gets its own workdir DIR/<key=value__...> and is trained and evaluated by
`synthjax.train.train_and_evaluate`, so it can be inspected, sampled from and
resumed like any run. Then DIR holds:
- results.csv: one row per run, the axis values, the last logged training
  metrics and the final evaluation (`eval/...`), steps and seconds;
- results.md: a Markdown table per variant (the non-seed axes) with
  mean ± std over seeds (sample std; n = number of seeds);
- <metric>.png: the chosen metric against steps, one line per variant
  (mean over seeds, shaded ± std), from each run's metrics.jsonl.
A finished run (its sweep_summary.json matching the config) is not rerun, so
an interrupted sweep continues where it stopped.

--vmap trains the runs that differ only in the seed or numeric
hyperparameters (the trainer's `vmappable_keys`: learning rates, beta,
penalty weights, EMA decay, ...) as members of one stack: one workdir
DIR/stack[__<other axis values>] trained by the ordinary loop
(`synthjax.train.train_stack`, synthjax/stack.py) with a leading member axis
on the TrainState and `jax.vmap` of the same train step inside one jit. Runs
that differ structurally (a width, an architecture, a loss) form separate
stacks. `--vmap` alone stacks every vmappable axis; `--vmap seed,opt.lr`
names the axes and refuses any that cannot be stacked. A stack has
everything a single run has: its metrics.jsonl (rows carry `"member": i`,
the index in its members.json), TensorBoard runs and sample grids per member
(`tensorboard/<run name>`, `samples/<run name>/`), periodic evaluation, and
checkpoints of the whole stack, so a killed sweep resumes where it stopped.
Each member reads the data order of its own seed, as a run of its own would,
and equals that run to float tolerance; `--config.sweep.shared_data_order=True`
gives every member the first member's order (results.md says so). A member
whose training goes non-finite is frozen and listed in the table's
`diverged` column; `train.on_nonfinite='halt'` stops only when all have.
A config may set overrides for stacks per backend, `sweep.cpu_stack_overrides`
and `sweep.gpu_stack_overrides` (dcgan: `model.conv_impl=stack`, formulations
that stay GEMMs or oneDNN calls under vmap rather than becoming grouped
convolutions);
`python -m synthjax.bench --members N` measures a stack against its members
run one by one.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import difflib
import importlib.util
import itertools
import json
import os
import re
import sys
from typing import Any, Sequence

import ml_collections
import numpy as np

from synthjax import config as config_lib
from synthjax import tuning
from synthjax.errors import UserError

SUMMARY = "sweep_summary.json"
SEED = "seed"
SPLIT_KEY = "eval/split"  # which data split the eval/ figures were measured on
RANGE = re.compile(r"^(-?\d+):(-?\d+)(?::(-?\d+))?$")


# ----------------------------------------------------------------------------- axes and runs


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept config key and its values, typed like the config field."""

    key: str
    values: tuple


@dataclasses.dataclass
class Run:
    """One point of the grid: its values per axis, full config and workdir."""

    name: str
    values: dict[str, Any]
    config: ml_collections.ConfigDict
    workdir: str
    member: int | None = None  # index in its stack's workdir, None for a run of its own


def _config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out += _config_keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [f"{prefix}{k}"]
    return out


def _field(config: ml_collections.ConfigDict, key: str) -> Any:
    """The current value of a dotted leaf key; a UserError naming close keys when there is none."""
    node = config
    try:
        for part in key.split("."):
            node = node[part]
    except (KeyError, AttributeError, TypeError):
        node = None
    else:
        if not isinstance(node, ml_collections.ConfigDict):
            return node
    close = difflib.get_close_matches(key, _config_keys(config), n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise UserError(f"sweep axis {key!r} is not a config key{hint}")


def _assign(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set a dotted key to a Python value, refusing a value of the wrong type (ConfigDict is type-safe)."""
    parent, _, leaf = key.rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
        node = node[part]
    try:
        node[leaf] = value
    except TypeError:
        old = node[leaf]
        raise UserError(
            f"sweep axis {key}: value {value!r} ({type(value).__name__}) does not fit the config field, "
            f"which holds a {type(old).__name__} ({old!r})"
        ) from None


def _typed(config: ml_collections.ConfigDict, key: str, value: Any) -> Any:
    """`value` (a Python value, or a string as on the command line) converted to the field's type, or a UserError."""
    old = _field(config, key)
    trial = copy.deepcopy(config)
    if isinstance(value, str):
        config_lib.set_value(trial, key, value)  # parses like --config.KEY=VALUE, with its type errors
    else:
        if isinstance(old, bool) != isinstance(value, bool) or (isinstance(old, str) and not isinstance(value, str)):
            raise UserError(f"sweep axis {key}: value {value!r} is a {type(value).__name__}, the field holds a {type(old).__name__}")
        _assign(trial, key, value)
    return _field(trial, key)


def parse_axis_spec(spec: str) -> tuple[str, str]:
    """'KEY=V1,V2' -> ('KEY', 'V1,V2'), with a UserError for anything else."""
    key, eq, values = spec.partition("=")
    if not eq or not key.strip() or not values.strip():
        raise UserError(f"--sweep {spec!r}: expected KEY=V1,V2,... or KEY=A:B (integers A..B-1), e.g. --sweep 'seed=0:4'")
    return key.strip(), values.strip()


def make_axis(config: ml_collections.ConfigDict, key: str, values: Any) -> Axis:
    """An axis from a CLI string ('a,b', '0:4') or a list of Python values, type-checked against `config`."""
    old = _field(config, key)
    if isinstance(values, str):
        match = RANGE.match(values)
        if match:
            if not isinstance(old, int) or isinstance(old, bool):
                raise UserError(f"sweep axis {key}={values!r}: the range syntax A:B is for integer keys; {key} holds {old!r}")
            start, stop, step = (int(g) if g else None for g in match.groups())
            values = list(range(start, stop, step or 1))
        else:  # '|' separates values that themselves contain commas (e.g. DiffAugment policies)
            values = [v.strip() for v in values.split("|" if "|" in values else ",")]
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise UserError(f"sweep axis {key} has no values")
    typed = tuple(_typed(config, key, v) for v in values)
    if len(set(map(repr, typed))) != len(typed):
        raise UserError(f"sweep axis {key} repeats a value: {list(typed)}")
    return Axis(key, typed)


def build_axes(config: ml_collections.ConfigDict, specs: Sequence[str] | dict | None) -> list[Axis]:
    """Axes from `--sweep` strings or a `get_sweep()` dict; duplicate keys are an error."""
    items = list(specs.items()) if isinstance(specs, dict) else [parse_axis_spec(s) for s in specs or ()]
    if not items:
        raise UserError("no sweep axes: pass --sweep KEY=V1,V2 (repeatable) or define get_sweep() in the config file")
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise UserError(f"sweep axis given twice: {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
    return [make_axis(config, k, v) for k, v in items]


def _format(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text) or "_"


def expand(config: ml_collections.ConfigDict, axes: list[Axis], workdir: str) -> list[Run]:
    """Every combination of the axis values, in axis order (the last axis varies fastest)."""
    runs = []
    for combo in itertools.product(*(a.values for a in axes)):
        values = {a.key: v for a, v in zip(axes, combo)}
        run_config = copy.deepcopy(config)
        for key, value in values.items():
            _assign(run_config, key, value)
        name = "__".join(f"{k}={_format(v)}" for k, v in values.items())
        runs.append(Run(name, values, run_config, os.path.join(workdir, name)))
    return runs


# ----------------------------------------------------------------------------- checks before any run


def check_runs(runs: list[Run]) -> dict[str, Any]:
    """Build every run's trainer on its data (names, labels, shapes, shared settings), before anything trains.

    Returns the trainers by run name. Data sources are built once per distinct data config.
    """
    from synthjax.data import get_source
    from synthjax.parallel import DataParallel
    from synthjax.train import check_inputs
    from synthjax.trainers import build_trainer

    sources, trainers = {}, {}
    for run in runs:
        try:
            config_lib.validate(run.config, DataParallel(run.config.train.parallel).num_devices)
            data_key = json.dumps(config_lib.to_dict(run.config.data), sort_keys=True)
            if data_key not in sources:
                sources[data_key] = get_source(run.config.data)
            source = sources[data_key]
            trainers[run.name] = build_trainer(run.config, source.image_shape, source.num_classes)
            check_inputs(trainers[run.name], source)
        except UserError as e:
            raise UserError(f"sweep run {run.name}: {e}") from None
    return trainers


def vmappable_keys(trainer) -> tuple[str, ...]:
    """The config keys a trainer lets --vmap stack (its declared `vmappable_keys`; empty when it offers none)."""
    return tuple(trainer.vmappable_keys)


def vmap_axes(axes: list[Axis], requested: str, trainers: dict[str, Any]) -> list[str]:
    """Which axes to stack: all vmappable ones ('auto') or the named ones, each checked against every trainer."""
    allowed = set.intersection(*(set(vmappable_keys(t)) for t in trainers.values()))
    family = sorted({t.family for t in trainers.values()})
    valid = ", ".join(sorted(allowed)) or "none"
    keys = [a.key for a in axes]
    if requested == "auto":
        chosen = [k for k in keys if k in allowed]
        if not chosen:
            raise UserError(
                f"--vmap: none of the sweep axes ({', '.join(keys)}) can be vmapped for model.family {'/'.join(family)}; "
                f"axes that can: {valid}. Drop --vmap to run them one by one"
            )
        return chosen
    chosen = [k.strip() for k in requested.split(",") if k.strip()]
    for key in chosen:
        if key not in keys:
            raise UserError(f"--vmap {key}: not a sweep axis (axes: {', '.join(keys)})")
        if key not in allowed:
            raise UserError(
                f"--vmap cannot stack {key}: it changes the structure of the model or step (shapes, architecture, "
                f"loss), not just numbers. Axes that can be vmapped for model.family {'/'.join(family)}: {valid}; "
                f"other axes run as separate programs with --vmap (no value) or without --vmap"
            )
    return chosen


def group_runs(runs: list[Run], stacked: list[str]) -> list[list[Run]]:
    """Runs that agree on every non-stacked axis form one group (in grid order)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = tuple(repr(v) for k, v in run.values.items() if k not in stacked)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


# ----------------------------------------------------------------------------- running


def summary_path(run: Run) -> str:
    """Where the sweep keeps a run's final summary: in its workdir, or its stack's summaries/ folder."""
    if run.member is None:
        return os.path.join(run.workdir, SUMMARY)
    return os.path.join(run.workdir, "summaries", f"{run.name}.json")


def finished_summary(run: Run) -> dict | None:
    """The saved summary of a finished run of exactly this config, else None."""
    path = summary_path(run)
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if saved.get("config") != config_lib.flat_dict(run.config):
        return None
    return saved.get("summary")


def save_summary(run: Run, summary: dict) -> None:
    from synthjax.files import write_atomic

    clean = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float, np.floating, np.integer))}
    os.makedirs(os.path.dirname(summary_path(run)), exist_ok=True)
    write_atomic(summary_path(run), json.dumps({"config": config_lib.flat_dict(run.config), "summary": clean}, indent=1))


def run_sequential(run: Run) -> dict:
    """One run through the normal loop (resumes its own checkpoints)."""
    from synthjax.train import train_and_evaluate

    return train_and_evaluate(run.config, run.workdir)


def stack_name(group: list[Run], stacked: list[str]) -> str:
    """The workdir name of a stack: 'stack' and the values its members share on the other axes."""
    shared = "__".join(f"{k}={_format(v)}" for k, v in group[0].values.items() if k not in stacked)
    return f"stack__{shared}" if shared else "stack"


def as_stack(group: list[Run], stacked: list[str], workdir: str) -> list[Run]:
    """The group's runs as members of one stack: one workdir (checkpoints, metrics.jsonl rows by member index)."""
    directory = os.path.join(workdir, stack_name(group, stacked))
    return [dataclasses.replace(run, workdir=directory, member=i) for i, run in enumerate(group)]


def run_stack(group: list[Run]) -> list[dict]:
    """Members of one stack through the training loop (synthjax.train.train_stack); resumes its checkpoints."""
    from synthjax.train import train_stack

    return train_stack([r.config for r in group], group[0].workdir, [r.name for r in group])


# ----------------------------------------------------------------------------- results


def read_curve(run: Run, metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` from a run's metrics.jsonl (its own rows of its stack's file)."""
    path = os.path.join(run.workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["step"], r[metric]) for r in rows if metric in r and r.get("member") == run.member]


def variant_of(run: Run) -> tuple:
    """The run's values on every axis but the seed: runs of one variant are replicates."""
    return tuple((k, v) for k, v in run.values.items() if k != SEED)


def write_csv(path: str, runs: list[Run], summaries: list[dict]) -> list[str]:
    axes = list(runs[0].values)
    metrics = sorted({k for s in summaries for k in s})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *axes, *metrics])
        for run, summary in zip(runs, summaries):
            w.writerow([run.name, *(run.values[a] for a in axes), *(summary.get(m, "") for m in metrics)])
    return metrics


def mean_std(values: list[float]) -> str:
    """'m ± s [lo, hi]': sample std over seeds and the 95% confidence interval of the mean (Student's t,
    n - 1 degrees of freedom); just 'm' for one value."""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    from scipy import stats

    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * std / np.sqrt(len(values))
    return f"{mean:.4g} ± {std:.2g} [{mean - half:.4g}, {mean + half:.4g}]"


def diverged_cell(runs: list[Run], rows: list[dict]) -> str:
    """The runs of a variant whose training went non-finite (frozen members of a stack), with the step."""
    bad = [f"{r.values.get(SEED, r.name)}@{int(s['diverged_at'])}" for r, s in zip(runs, rows) if s.get("diverged_at", 0) > 0]
    return ", ".join(f"seed {b}" for b in bad) if bad else "-"


def markdown_table(runs: list[Run], summaries: list[dict], metric: str) -> str:
    """One row per variant: its non-seed axis values, the number of seeds and mean ± std of the metrics."""
    columns = [metric] + sorted({k for s in summaries for k in s if k.startswith("eval/") and k not in (metric, SPLIT_KEY)})
    variants: dict[tuple, list[tuple[Run, dict]]] = {}
    for run, summary in zip(runs, summaries):
        variants.setdefault(variant_of(run), []).append((run, summary))
    axes = [k for k in runs[0].values if k != SEED]
    show_diverged = any(s.get("diverged_at", 0) > 0 for s in summaries)
    extra = ["diverged"] if show_diverged else []
    lines = ["| " + " | ".join([*axes, "n", *columns, *extra]) + " |", "|" + "---|" * (len(axes) + 1 + len(columns) + len(extra))]
    for variant, pairs in variants.items():
        rows = [s for _, s in pairs]
        cells = [str(v) for _, v in variant] + [str(len(rows))]
        for c in columns:  # a diverged member's final numbers are those of its frozen state: left out of the means
            vals = [r[c] for r in rows if c in r and r.get("diverged_at", 0) == 0]
            cells.append(mean_std(vals) if vals else "")
        if show_diverged:
            cells.append(diverged_cell([r for r, _ in pairs], rows))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_metric(path: str, runs: list[Run], metric: str) -> None:
    """The metric against steps, one line per variant (mean over seeds, ± std band), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants: dict[tuple, list[Run]] = {}
    for run in runs:
        variants.setdefault(variant_of(run), []).append(run)
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, members in variants.items():
        curves = [dict(read_curve(r, metric)) for r in members]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not steps:
            continue
        values = np.array([[c[s] for s in steps] for c in curves])
        label = ", ".join(f"{k}={v}" for k, v in variant) or "all"
        mean, std = values.mean(0), (values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(steps)))
        ax.plot(steps, mean, marker="o" if len(steps) < 20 else None, label=label)
        if len(members) > 1:
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (mean ± std over seeds)")
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclasses.dataclass
class SweepResult:
    """What a sweep wrote: per-run summaries and the paths of the table, CSV and plot."""

    runs: list[Run]
    summaries: list[dict]
    metric: str
    csv_path: str
    table_path: str
    plot_path: str
    table: str


def default_metric(trainers: dict, summaries: list[dict]) -> str:
    """The trainer's `sweep_metric` when it logged one, else the first logged training metric."""
    preferred = next(iter(trainers.values())).sweep_metric
    keys = sorted(k for k in summaries[0] if k not in ("step", "seconds", "skipped") and not k.startswith("eval/"))
    return preferred if preferred in summaries[0] else (keys[0] if keys else "step")


def results_note(runs: list[Run]) -> str:
    """What the numbers are: final values over seeds, and whether stacked members shared one data order."""
    note = f"{len(runs)} runs; final values, mean ± std over seeds [95% confidence interval of the mean]"
    if any(r.member is not None for r in runs) and runs[0].config.sweep.shared_data_order:
        note += "; stacked members shared one data order (sweep.shared_data_order=True): seeds vary initialisation and noise only"
    return note


def write_results(workdir: str, runs: list[Run], summaries: list[dict], metric: str) -> SweepResult:
    csv_path = os.path.join(workdir, "results.csv")
    known = write_csv(csv_path, runs, summaries)
    if metric not in known:
        raise UserError(f"--metric {metric!r} was not logged by these runs; available: {', '.join(known)}")
    table = markdown_table(runs, summaries, metric)
    table_path = os.path.join(workdir, "results.md")
    with open(table_path, "w") as f:
        splits = ", ".join(sorted({str(s[SPLIT_KEY]) for s in summaries if SPLIT_KEY in s})) or "none"
        f.write(f"# Sweep results ({results_note(runs)}; eval/ columns measured on split: {splits})\n\n{table}")
    plot_path = os.path.join(workdir, re.sub(r"[^A-Za-z0-9._-]", "_", metric) + ".png")
    plot_metric(plot_path, runs, metric)
    return SweepResult(runs, summaries, metric, csv_path, table_path, plot_path, table)


# ----------------------------------------------------------------------------- entry points


def load_config_and_sweep(path: str, overrides: Sequence[str] = ()) -> tuple[ml_collections.ConfigDict, dict | None]:
    """The config of `configs/X.py[:arg]` with overrides, and its file's `get_sweep()` (None when it has none)."""
    config = config_lib.load_config(path, overrides)
    file = path.partition(":")[0]
    spec = importlib.util.spec_from_file_location(f"_synthjax_sweep_{os.path.basename(file)[:-3]}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_sweep = getattr(module, "get_sweep", None)
    return config, (get_sweep() if get_sweep else None)


def run_sweep(
    config: str | ml_collections.ConfigDict,
    workdir: str,
    sweep: Sequence[str] | dict | None = None,
    metric: str = "",
    vmap: bool | str = False,
    overrides: Sequence[str] = (),
    log=print,
) -> SweepResult:
    """Run the grid (see the module docstring) and write results.csv, results.md and the plot into `workdir`.

    `config` is a path 'configs/X.py[:arg]' (whose `get_sweep()` is used when
    `sweep` is None) or a ConfigDict; `vmap` is False, True (stack every
    vmappable axis) or a comma-separated list of axes. Everything is checked
    (axis keys and value types, registry names, data labels, vmappability)
    before the first run starts.
    """
    if isinstance(config, str):
        config, file_sweep = load_config_and_sweep(config, overrides)
        sweep = sweep if sweep else file_sweep
    axes = build_axes(config, sweep)
    runs = expand(config, axes, workdir)
    trainers = check_runs(runs)
    requested = "auto" if vmap is True else (vmap or "")
    stacked = vmap_axes(axes, requested, trainers) if requested else []
    groups = group_runs(runs, stacked) if stacked else [[r] for r in runs]
    groups = [as_stack(g, stacked, workdir) if len(g) > 1 else g for g in groups]
    by_name = {r.name: r for g in groups for r in g}
    runs = [by_name[r.name] for r in runs]  # grid order, with each member's stack workdir
    os.makedirs(workdir, exist_ok=True)
    log(f"sweep: {len(runs)} runs in {len(groups)} program(s)" + (f", vmapping {', '.join(stacked)}" if stacked else ""))

    summaries: dict[str, dict] = {}
    for group in groups:
        done = {r.name: finished_summary(r) for r in group}
        if all(done.values()):
            summaries.update(done)
            log(f"sweep: {', '.join(done)} already finished")
            continue
        if len(group) == 1:
            log(f"sweep: training {group[0].name}")
            results = [run_sequential(group[0])]
        else:
            log(f"sweep: training {len(group)} runs as one stack in {group[0].workdir}: {', '.join(r.name for r in group)}")
            results = run_stack(group)
        for run, summary in zip(group, results):
            save_summary(run, summary)
            summaries[run.name] = finished_summary(run) or summary
    ordered = [summaries[r.name] for r in runs]
    return write_results(workdir, runs, ordered, metric or default_metric(trainers, ordered))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m synthjax.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="configs/X.py[:smoke]")
    parser.add_argument("--workdir", required=True, help="directory for the runs and the results")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="an axis (repeatable); KEY=A:B for integers A..B-1")
    parser.add_argument("--metric", default="", help="metric for the plot and table (default: the family's main loss)")
    parser.add_argument("--vmap", nargs="?", const="auto", default="", metavar="AXES",
                        help="stack vmappable axes in one program; optionally name them (comma-separated)")
    try:
        rest, overrides = config_lib.split_overrides(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(rest)
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        tuning.apply(config_lib.load_config(args.config, overrides).train.cpu_allocator)  # the first run's setting
        result = run_sweep(args.config, args.workdir, args.sweep or None, args.metric, args.vmap or False, overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(result.table, end="")
    print(f"sweep: wrote {result.csv_path}, {result.table_path}, {result.plot_path}")


if __name__ == "__main__":
    main()
