"""What measuring costs a run: whole quickstart runs with and without diagnostic rounds,
and the cost per step of each quantity when tracked at every step.

Part 1, whole runs: `loop.train_and_evaluate` on configs/digits_interpolation.py (the
quickstart's network, without the quickstart's augmentation, as measured before the
quickstart became the augmented twin; `quickstart` below names it) with its own
cadence (a round every epoch of 46 steps: K = 16 minibatches, 5 power iterations and
the row's summary), without rounds (`diagnostics.every_steps=0`), and with the round one
minibatch and one iteration per call (the driver before chunking). (a) Complete runs as
a user starts them, compilation included. (b) The steady-state cost of an epoch: the
difference between a long and a short run over the epochs between them, so set-up and
compilation cancel (compiled programs come from a persistent cache after the first
run); the base configs' cadence (a round every 1,000 steps) is derived from it. Figures
are not drawn; everything else a run does (loader thread, metric rows, weight
projections, checkpoints) is included.

Part 2, every step (as Cockpit's benchmark reports it). A training loop on
device-resident quickstart batches whose jitted step also computes one quantity and
reads it to the host at every step, against the bare step:
- loss: the step's loss;
- gradient norm: of the step's minibatch gradient, in the same program;
- gradient noise: `dg.gradient_stats` over the step's batch in 4 parts (the update uses
  their mean, the batch gradient), so each step also gives grad norm and noise;
- directional sharpness along the update (`dg.directional_sharpness`);
- sharpness: 5 power iterations warm-started from the last step's vector;
- the driver's whole diagnostic round.

    python -m benchmarks.run_overhead             # a few minutes
    python -m benchmarks.run_overhead --quick     # the tiny config, seconds (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (after the path set-up for file runs)
import configs.digits_interpolation as quickstart  # noqa: E402
from invmeasure import diagnostics as dg  # noqa: E402
from invmeasure.analysis import figures  # noqa: E402
from invmeasure.training import loop, metric_writer, step as step_lib  # noqa: E402

FULL_HEADER = ("diagnostics", "rounds", "run s", "vs no rounds", "notes")
RUN_HEADER = ("diagnostics", "rounds per epoch", "ms per epoch", "overhead",
              "ms per round", "notes")
STEP_HEADER = ("tracked at every step", "ms per step", "vs bare step", "Cockpit reports")
NONE = "none (every_steps=0)"
SINGLE = "quickstart cadence, 1 minibatch / iteration per call (before)"
# Config overrides of each whole-run setting ('_single': the round before chunking).
SETTINGS = {
    NONE: {"diagnostics.every_steps": 0, "diagnostics.at_epoch_end": False},
    "quickstart cadence (every epoch)": {},
    SINGLE: {"_single": True},
    "none, and no weight projections": {"diagnostics.every_steps": 0,
                                        "diagnostics.at_epoch_end": False,
                                        "diagnostics.num_projections": 0},
}


def _settings(sizes: "Sizes") -> dict[str, dict]:
  """All settings; --quick runs the two code paths, with and without rounds."""
  return SETTINGS if sizes.warmup else dict(list(SETTINGS.items())[:2])


# Steady-state runs save only at their end, so that short and long runs save alike.
ONE_CHECKPOINT = {"checkpoint_every_steps": 10 ** 9}


@dataclasses.dataclass(frozen=True)
class Sizes:
  arg: str = ""            # quickstart config argument
  full_steps: int = 0      # part 1a: whole runs of this many steps (0: the config's)
  full_repeats: int = 2    # part 1a: interleaved repetitions
  short_steps: int = 92    # part 1b: the short run (2 epochs)
  long_steps: int = 1012   # part 1b: the long run (22 epochs)
  warmup: bool = True      # part 1b: a first run of each setting fills the cache
  repeats: int = 5         # part 1b: interleaved (short, long) pairs per setting
  step_repeats: int = 7    # part 2 repetitions
  steps_per_call: int = 46  # part 2: steps timed together (one epoch)


QUICK = Sizes(arg="tiny", full_steps=8, full_repeats=1, short_steps=4, long_steps=8,
              warmup=False, repeats=1, step_repeats=1, steps_per_call=2)


# ----------------------------------------------------------------------------- part 1


def _config(sizes: Sizes, steps: int, overrides: dict):
  config = quickstart.get_config(sizes.arg)
  steps_per_epoch = 1500 // config.batch_size
  config.num_train_steps = steps or config.get("num_train_steps") or int(
      config.num_epochs * steps_per_epoch)
  for field, value in overrides.items():
    if field.startswith("_"):
      continue
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config, steps_per_epoch


def run_seconds(sizes: Sizes, steps: int, overrides: dict) -> tuple[float, int]:
  """(wall seconds of one `train_and_evaluate`, diagnostic rows it wrote)."""
  config, _ = _config(sizes, steps, overrides)
  original = loop._DiagnosticRound
  if overrides.get("_single"):
    loop._DiagnosticRound = functools.partial(original, minibatches_per_call=1,
                                              power_iters_per_call=1)
  try:
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      loop.train_and_evaluate(config, workdir)
      seconds = time.perf_counter() - start
      rows = metric_writer.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  finally:
    loop._DiagnosticRound = original
  return seconds, sum("grad_norm" in row for row in rows)


def full_runs(sizes: Sizes) -> list[tuple]:
  """Part 1a: whole runs as a user starts them, compilation included."""
  settings = _settings(sizes)
  times = {name: [] for name in settings}
  rounds = {}
  for _ in range(sizes.full_repeats):
    for name, overrides in settings.items():
      seconds, rounds[name] = run_seconds(sizes, sizes.full_steps, overrides)
      times[name].append(seconds)
  config, _ = _config(sizes, sizes.full_steps, {})
  base = _median(times[NONE])
  return [(name, rounds[name], f"{_median(times[name]):.1f}",
           f"{_median(times[name]) / base - 1:+.0%}",
           f"{config.num_train_steps} steps, figures not drawn") for name in settings]


def steady_state(sizes: Sizes) -> list[tuple]:
  """Part 1b: the cost of an epoch, from long minus short runs (set-up cancels)."""
  _, steps_per_epoch = _config(sizes, 1, {})
  settings = _settings(sizes)
  for overrides in settings.values() if sizes.warmup else ():  # fill the compilation cache
    run_seconds(sizes, sizes.short_steps, {**overrides, **ONE_CHECKPOINT})
  times = {name: {"short": [], "long": []} for name in settings}
  rounds = {}
  for _ in range(sizes.repeats):
    for name, overrides in settings.items():
      for length, steps in (("short", sizes.short_steps), ("long", sizes.long_steps)):
        seconds, count = run_seconds(sizes, steps, {**overrides, **ONE_CHECKPOINT})
        times[name][length].append(seconds)
        rounds[(name, length)] = count
  span = (sizes.long_steps - sizes.short_steps) / steps_per_epoch  # epochs
  per_epoch = {name: 1e3 * (_median(t["long"]) - _median(t["short"])) / span
               for name, t in times.items()}
  base = per_epoch[NONE]
  rows, round_ms = [], {}
  for name in settings:
    per = (rounds[(name, "long")] - rounds[(name, "short")]) / span
    round_ms[name] = (per_epoch[name] - base) / per if per else float("nan")
    rows.append((name, f"{per:.3g}", f"{per_epoch[name]:.1f}",
                 f"{per_epoch[name] / base - 1:+.0%}", common.ms(round_ms[name]),
                 f"{steps_per_epoch} steps per epoch"))
  # The base configs' cadence, a round every 1,000 steps, from the measured round.
  per = steps_per_epoch / 1000
  chunked = round_ms["quickstart cadence (every epoch)"]
  rows.append(("base default (every 1000 steps), derived", f"{per:.3g}",
               f"{base + per * chunked:.1f}", f"{per * chunked / base:+.0%}",
               common.ms(chunked), "the quickstart cadence's round, 1000/46 times rarer"))
  return rows


def _median(xs: list[float]) -> float:
  return statistics.median(xs)


# ----------------------------------------------------------------------------- part 2


QUANTITIES = {
    "nothing (bare step)": "",
    "loss": "~1.0x",
    "loss + gradient norm": "~1.0x",
    "gradient noise (4 parts of the batch)": "1.2x (variance tests)",
    "directional sharpness along the update": "1.5x+ (Hessian quantities)",
    "sharpness, 5 power iterations": "1.5x+ (Hessian quantities)",
    "the driver's whole diagnostic round": "21x (the full set)",
}


def tracked_step(task, quantity: str) -> Callable:
  """The image task's step plus `quantity`, returning (state, values to read)."""
  tx = task.optimization.tx

  def step(state, batch):
    images = task.preprocess(batch["image"], None)  # the quickstart does not augment
    key = jax.random.key(0)
    values = {}
    if quantity.startswith("gradient noise"):
      # The batch in 4 parts: their mean gradient is the batch gradient SGD follows.
      parts = {"image": images.reshape(4, -1, *images.shape[1:]),
               "label": batch["label"].reshape(4, -1)}
      loss_fn = lambda p, b: task.batch_loss(p, state.model_state, b["image"], b["label"],
                                             key)[0]
      stats = dg.gradient_stats(loss_fn, state.params, parts, unroll=True)
      loss, grads, model_state = stats.loss, stats.mean_gradient, state.model_state
      values.update(grad_norm=stats.grad_norm, noise_norm=stats.noise_norm)
    else:
      grad_fn = jax.value_and_grad(task.batch_loss, has_aux=True)
      (loss, model_state), grads = grad_fn(state.params, state.model_state, images,
                                           batch["label"], key)
    new_state, _ = step_lib.apply_gradients(tx, state, loss, grads, model_state=model_state)
    if quantity != "nothing (bare step)":
      values["loss"] = loss
    if quantity == "loss + gradient norm":
      values["grad_norm"] = dg.tree_norm(grads)
    loss_fn = lambda p, b: task.batch_loss(p, state.model_state, b["image"], b["label"],
                                           key)[0]
    here = {"image": images, "label": batch["label"]}
    if quantity.startswith("directional"):
      update = jax.tree.map(jnp.subtract, new_state.params, state.params)
      values["update_sharpness"] = dg.directional_sharpness(loss_fn, state.params, here,
                                                            update)
    if quantity.startswith("sharpness"):
      top = dg.sharpness(loss_fn, state.params, here, init=state.sharpness_vector,
                         num_iters=5, tol=0.0, unroll=True)
      values["sharpness"] = top.eigenvalue
      new_state = new_state._replace(sharpness_vector=top.eigenvector)
    return new_state, values

  return step


def per_step_costs(sizes: Sizes) -> list[tuple]:
  config = quickstart.get_config(sizes.arg)
  plan = loop.make_plan(config)
  task = plan.task
  state = loop.init_state_fn(plan)(loop.init_key(config))
  n = sizes.steps_per_call
  batches = [{k: jax.device_put(v, plan.batch_sharding) for k, v in task.train_batch(t).items()}
             for t in range(n)]
  diag = config.diagnostics
  diag_batches = loop._Batches(task, plan.batch_sharding)
  minibatches = diag_batches.diagnostic(0, int(diag.num_minibatches), config.batch_size)
  diag_batches.close()
  the_round = loop._DiagnosticRound(task.diagnostic_fns(), plan.replicated,
                                    int(diag.sharpness_iters), 0.0)
  states = {}
  fns = {}
  for quantity in QUANTITIES:
    if quantity.startswith("the driver"):
      continue
    # Each variant steps its own copy of the state (the step donates it).
    states[quantity] = jax.tree.map(jnp.copy, state)
    step = jax.jit(tracked_step(task, quantity), donate_argnums=0)

    def run(quantity=quantity, step=step):
      for batch in batches:
        states[quantity], values = step(states[quantity], batch)
        if values:
          jax.tree.map(float, values)  # read every step, as a logger would
      return states[quantity].step
    fns[quantity] = run
  bare = jax.jit(tracked_step(task, "nothing (bare step)"), donate_argnums=0)
  states["round"] = jax.tree.map(jnp.copy, state)

  def with_round():
    for batch in batches:
      states["round"], _ = bare(states["round"], batch)
      the_round(states["round"], minibatches)
    return states["round"].step
  fns["the driver's whole diagnostic round"] = with_round
  times = common.interleaved_ms(fns, sizes.step_repeats, per_call={k: n for k in fns})
  base = times["nothing (bare step)"]
  return [(q, common.ms(times[q]), common.ratio(times[q], base), QUANTITIES[q])
          for q in QUANTITIES]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="the tiny config, one repetition")
  parser.add_argument("--repeats", type=int, default=None, help="part 1 repetitions")
  parser.add_argument("--part", choices=("all", "runs", "steps"), default="all")
  args = parser.parse_args(argv)
  sizes = QUICK if args.quick else Sizes()
  if args.repeats:
    sizes = dataclasses.replace(sizes, repeats=args.repeats, step_repeats=args.repeats)
  figures.write_figures = lambda *a, **k: None  # not what is measured
  config = quickstart.get_config(sizes.arg)
  diag = config.diagnostics
  print(common.machine_line(
      f"quickstart{':' + sizes.arg if sizes.arg else ''} (round: K={diag.num_minibatches}, "
      f"{diag.sharpness_iters} power iterations); steady state from runs of "
      f"{sizes.short_steps} and {sizes.long_steps} steps, median of {sizes.repeats}; "
      f"per-step rows median of {sizes.step_repeats} x {sizes.steps_per_call} steps"))
  if args.part in ("all", "runs"):
    print()
    print(common.table(FULL_HEADER, full_runs(sizes), "lrrrl"))
    # Set-up and compilation cancel in the differences below; a persistent cache keeps
    # them short. (Set only now: the whole runs above compile as a user's would.)
    jax.config.update("jax_compilation_cache_dir",
                      tempfile.mkdtemp(prefix="invmeasure-bench-cache-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    print()
    print(common.table(RUN_HEADER, steady_state(sizes), "lrrrrl"))
  if args.part in ("all", "steps"):
    print()
    print(common.table(STEP_HEADER, per_step_costs(sizes), "lrrl"))
  print(common.end_line())


if __name__ == "__main__":
  main()
