"""`python -m experiments.claims`: run the suite, measure every claim, write the report."""

from __future__ import annotations

import datetime
import os
import sys
import time

from invmeasure.analysis import figures, invariant_figures, runs
from invmeasure.claims import evidence, report, suite as suite_lib
from invmeasure.training import config_checks, metric_writer


def _log(message: str) -> None:
  print(f"[claims] {message}", file=sys.stderr, flush=True)


def write_report(workdir: str, quick: bool = False) -> str:
  """Runs (or resumes) the suite in `workdir/runs`, then writes `workdir/claims.md`."""
  config_checks.check_workdir(workdir)
  started = time.time()
  suite = suite_lib.quick() if quick else suite_lib.full()
  os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
  workdirs = suite_lib.run_all(suite, workdir, log=lambda name: _log(f"run {name}"))
  trained = time.time()
  loaded = {name: runs.load_run(path) for name, path in workdirs.items()
            if name != "synthetic_1d"}
  fig = lambda *parts: os.path.join(workdir, "figures", *parts)  # noqa: E731
  rel = lambda path: os.path.relpath(path, workdir)  # noqa: E731

  constant = [loaded[f"lr_{lr:g}"] for lr in suite_lib.CONSTANT_LRS]
  measure_run = loaded[suite_lib.MEASURE_RUN]
  lr_figures = figures.write_figures([r.workdir for r in constant], fig("learning_rates"))
  dynamics = {name: rel(os.path.join(path, "figures", "training_dynamics.png"))
              for name, path in workdirs.items()}
  five = os.path.join(workdirs[suite_lib.MEASURE_RUN], "figures",
                      "moving_average_vs_last_iterate.png")

  _log("claims from the training runs")
  claims = [evidence.loss_stable_gradient_not_vanishing(measure_run,
                                                       dynamics[suite_lib.MEASURE_RUN])]
  claims += evidence.smaller_lr_larger(constant, rel(lr_figures[0]))
  claims.append(evidence.noise_grows(measure_run, dynamics[suite_lib.MEASURE_RUN]))
  claims.append(evidence.lr_decay_lowers_loss(loaded["step"], dynamics["step"]))
  claims.append(evidence.overfit_gradient_vanishes(loaded["overfit"], dynamics["overfit"]))
  claims.append(evidence.moving_average_smoother(measure_run, rel(five)))
  synthetic_rows = metric_writer.read_metrics(
      os.path.join(workdirs["synthetic_1d"], runs.METRICS_FILE))
  claims.append(evidence.synthetic_regimes(
      synthetic_rows, rel(os.path.join(workdirs["synthetic_1d"], "figures", "synthetic_1d.png"))))

  _log("invariant-measure analysis")
  averages_png = invariant_figures.plot_birkhoff_averages(measure_run.rows,
                                                         fig("time_averages.png"))
  claims += evidence.time_average_converges(measure_run, rel(averages_png))
  claims.append(evidence.measure_converges(workdirs[suite_lib.MEASURE_RUN],
                                           suite_lib.MEASURE_RUN, fig("windows.png"), rel))
  claims.append(evidence.inside_ball(loaded["plain_sgd"], fig("ball.png"), rel))
  for name in (suite_lib.MEASURE_RUN, "plain_sgd"):
    claims.append(evidence.balance(loaded[name], fig(f"equation10_{name}.png"), rel))

  _log("estimator study")
  claims += evidence.estimators(workdirs[suite_lib.MEASURE_RUN], suite,
                                fig("estimators.png"), rel)
  _log("step-size study")
  claims += evidence.step_sizes(workdirs[suite_lib.MEASURE_RUN], measure_run, suite,
                                fig("step_size.png"), rel)

  header = {
      "command": f"python -m experiments.claims --workdir={workdir}"
                 + (" --quick" if quick else ""),
      "mode": "quick (a smoke test: its numbers are not evidence)" if quick else "full",
      "date": datetime.date.today().isoformat(),
      "machine": report.machine(),
      "wall time": f"{time.time() - started:.0f} s ({trained - started:.0f} s training)",
      "runs": ", ".join(f"`runs/{name}`" for name in workdirs),
  }
  return report.write(claims, workdir, header)
