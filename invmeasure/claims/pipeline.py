"""`python -m experiments.claims`: run the suite, measure every claim, write the report."""

from __future__ import annotations

import datetime
import os
import sys
import time

from invmeasure.analysis import figures, invariant_figures, runs
from invmeasure.claims import evidence, report, suite as suite_lib
from invmeasure.training import config_checks, metric_writer, storage


def _log(message: str) -> None:
  print(f"[claims] {message}", file=sys.stderr, flush=True)


def _seed_claims(suite: suite_lib.Suite, paths: dict[str, str], dynamics: dict[str, str],
                 lr_figure: str, fig_dir: str, rel) -> list[report.Claim]:
  """Every claim measured on one seed's runs (`paths`: run name -> workdir), in the
  report's order; the 1-D example's claim is not among them (it has no seed)."""
  loaded = {name: runs.load_run(path) for name, path in paths.items()}
  fig = lambda name: os.path.join(fig_dir, name)  # noqa: E731
  measure_name = suite_lib.MEASURE_RUN
  measure = loaded[measure_name]
  constant = [loaded[suite_lib.constant_name(lr)] for lr in suite_lib.CONSTANT_LRS]
  five = rel(os.path.join(paths[measure_name], "figures",
                          "moving_average_vs_last_iterate.png"))

  claims = [evidence.loss_stable_gradient_not_vanishing(measure, dynamics[measure_name])]
  claims += evidence.smaller_lr_larger(constant, lr_figure)
  claims.append(evidence.noise_grows(measure, dynamics[measure_name]))
  claims.append(evidence.lr_decay_lowers_loss(loaded["step"], dynamics["step"]))
  claims.append(evidence.overfit_gradient_vanishes(loaded["overfit"], dynamics["overfit"]))
  claims.append(evidence.moving_average_smoother(measure, five))
  averages_png = invariant_figures.plot_birkhoff_averages(measure.rows, fig("time_averages.png"))
  claims += evidence.time_average_converges(measure, rel(averages_png))
  claims.append(evidence.measure_converges(paths[measure_name], measure_name,
                                           fig("windows.png"), rel))
  claims.append(evidence.inside_ball(loaded["plain_sgd"], fig("ball.png"), rel))
  for name in (measure_name, "plain_sgd"):
    claims.append(evidence.balance(loaded[name], fig(f"equation10_{name}.png"), rel))
  claims += evidence.estimators(paths[measure_name], suite, fig("estimators.png"), rel)
  claims += evidence.step_sizes(paths[measure_name], measure, suite, fig("step_size.png"), rel)
  claims += _text_claims(loaded, dynamics)
  return claims


def _text_claims(loaded: dict[str, runs.Run], dynamics: dict[str, str]) -> list[report.Claim]:
  """The Transformer arm (Figure 3's twin): its headline claim, the learning rates, and
  the cosine schedule against the constant rate."""
  arm = "Figure 3's Transformer arm: Transformer-XL, AdamW, text"
  constant = [loaded[suite_lib.text_name(lr)] for lr in suite_lib.TEXT_LRS]
  first = suite_lib.text_name(suite_lib.TEXT_LRS[0])
  claims = [evidence.loss_stable_gradient_not_vanishing(
      constant[0], dynamics[first], arm=arm, key="fig3_text_loss_stable_gradient_not_vanishing")]
  claims += evidence.smaller_lr_larger(constant, dynamics[first], fields=("grad_norm",),
                                       arm=arm, key_prefix="fig3_text_")
  claims.append(evidence.cosine_ends_lower(constant[0], loaded[suite_lib.TEXT_COSINE],
                                           dynamics[suite_lib.TEXT_COSINE], arm))
  return claims


def write_report(workdir: str, quick: bool = False, seeds: tuple[int, ...] | None = None,
                 jobs: int = 1) -> str:
  """Runs (or resumes) the suite in `workdir/runs` (on `seeds`, default the suite's; `jobs`
  runs at once), then writes `workdir/claims.md`."""
  config_checks.check_workdir(workdir)
  started = time.time()
  suite = suite_lib.quick() if quick else suite_lib.full()
  if seeds:
    suite = suite._replace(seeds=tuple(seeds))
  storage.makedirs(os.path.join(workdir, "figures"))
  synthetic_dir, workdirs = suite_lib.run_all(suite, workdir,
                                              log=lambda name: _log(f"run {name}"), jobs=jobs)
  trained = time.time()
  fig = lambda *parts: os.path.join(workdir, "figures", *parts)  # noqa: E731
  rel = lambda path: os.path.relpath(path, workdir)  # noqa: E731

  _log("figures of the seeds' means")
  dynamics = {name: rel(figures.write_figures(list(by_seed.values()), fig(name))[0])
              for name, by_seed in workdirs.items()}
  lr_figure = rel(figures.write_figures(
      [workdirs[suite_lib.constant_name(lr)][s] for lr in suite_lib.CONSTANT_LRS
       for s in suite.seeds], fig("learning_rates"))[0])

  per_seed = []
  for seed in suite.seeds:
    _log(f"claims of seed {seed} (with its fixed-weight studies)")
    storage.makedirs(fig(f"seed_{seed}"))
    paths = {name: by_seed[seed] for name, by_seed in workdirs.items()}
    per_seed.append(_seed_claims(suite, paths, dynamics, lr_figure, fig(f"seed_{seed}"), rel))
  claims = [report.combine(suite.seeds, same) for same in zip(*per_seed)]

  synthetic_rows = metric_writer.read_metrics(os.path.join(synthetic_dir, runs.METRICS_FILE))
  synthetic = evidence.synthetic_regimes(
      synthetic_rows, rel(os.path.join(synthetic_dir, "figures", "synthetic_1d.png")))
  claims.insert(suite_lib.SYNTHETIC_POSITION, synthetic)

  header = {
      "command": f"python -m experiments.claims --workdir={workdir}"
                 + (f" --seeds={','.join(map(str, seeds))}" if seeds else "")
                 + (f" --jobs={jobs}" if jobs > 1 else "")
                 + (" --quick" if quick else ""),
      "mode": "quick (a smoke test: its numbers are not evidence)" if quick else "full",
      "date": datetime.date.today().isoformat(),
      "machine": report.machine(),
      "wall time": f"{time.time() - started:.0f} s ({trained - started:.0f} s training, "
                   f"{jobs} at a time)",
      "load average at the end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
      "seeds": ", ".join(map(str, suite.seeds)),
      "runs": ", ".join(f"`runs/{name}/seed_<s>`" for name in workdirs)
              + ", `runs/synthetic_1d` (deterministic: one run)",
  }
  return report.write(claims, workdir, header)
