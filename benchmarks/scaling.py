"""The sharded train step and diagnostic round on 1, 2, 4 and 8 simulated CPU devices.

Each device count runs in a fresh interpreter with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (XLA reads it at start-up). Each
child builds the quickstart network's run plan (configs/digits_interpolation.py) over N devices (batch split over the 'data'
axis, state replicated), trains a few steps from the same seed, runs one diagnostic
round, and times the step and the round. All N simulated devices share this machine's
cores, so the times measure what partitioning costs (per-device work in smaller pieces,
collectives), not a speed-up; the numbers must agree across N up to float32 rounding.
Throughput on real accelerators (GPUs, ResNet-101) needs them and is not measured here.

    python -m benchmarks.scaling
    python -m benchmarks.scaling --quick      # the tiny config on 1 and 2 devices (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = ("devices", "step ms", "step vs 1 device", "round ms", "round vs 1 device",
          "max relative difference vs 1 device", "values compared")
VALUES = ("train_loss", "full_loss", "grad_norm", "noise_norm", "sharpness",
          "update_sharpness", "weight_norm")


def child(arg: str, train_steps: int, repeats: int, steps_per_call: int) -> dict:
  """Runs in the subprocess: trains, measures a round, times both; returns a dict."""
  sys.path.insert(0, ROOT)
  import jax
  import numpy as np
  import configs.digits_interpolation as quickstart
  from benchmarks import common
  from invmeasure.training import loop

  config = quickstart.get_config(arg)
  plan = loop.make_plan(config)
  task = plan.task
  state = loop.init_state_fn(plan)(loop.init_key(config))
  step = loop.jit_train_step(plan)
  batches = loop._Batches(task, plan.batch_sharding)
  for t in range(train_steps):
    state, metrics = step(state, batches.train(t))
  diag = config.diagnostics
  the_round = loop._DiagnosticRound(task.diagnostic_fns(), plan.replicated,
                                    int(diag.sharpness_iters), 0.0)
  minibatches = batches.diagnostic(train_steps, int(diag.num_minibatches), config.batch_size)
  row, _ = the_round(state, minibatches)
  values = {k: float(np.asarray(v)) for k, v in row.items() if k in VALUES}
  values["train_loss"] = float(np.asarray(metrics["loss"].addressable_data(0)))
  resident = [batches.train(t) for t in range(steps_per_call)]
  holder = {"state": state}

  def steps():
    for batch in resident:
      holder["state"], out = step(holder["state"], batch)
    return out

  times = common.interleaved_ms({"step": steps,
                                 "round": lambda: the_round(holder["state"], minibatches)[0]},
                                repeats, per_call={"step": steps_per_call})
  batches.close()
  return {"devices": jax.device_count(), "values": values, **times}


def run_child(devices: int, quick: bool) -> dict:
  env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                     f" --xla_force_host_platform_device_count={devices}")}
  cmd = [sys.executable, "-m", "benchmarks.scaling", "--child"] + (["--quick"] if quick else [])
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  if proc.returncode != 0:
    raise SystemExit(f"{devices} devices failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny config, 1 and 2 devices")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--devices", default=None, help="comma-separated (default 1,2,4,8)")
  args = parser.parse_args(argv)
  if args.child:
    # At most 8 steps in flight: ~40 queued multi-device executions deadlock XLA:CPU's
    # simulated devices (an all-reduce waits forever; docs/benchmarks.md).
    sizes = ("tiny", 2, 1, 2) if args.quick else ("", 20, 15, 8)
    print(json.dumps(child(*sizes)))
    return
  sys.path.insert(0, ROOT)
  from benchmarks import common
  counts = [int(n) for n in (args.devices or ("1,2" if args.quick else "1,2,4,8")).split(",")]
  print(common.machine_line(f"quickstart{':tiny' if args.quick else ''}, a subprocess per "
                            "device count"))
  results = [run_child(n, args.quick) for n in counts]
  first = results[0]
  rows = []
  for r in results:
    worst = max(abs(r["values"][k] - first["values"][k]) / max(abs(first["values"][k]), 1e-30)
                for k in first["values"])
    rows.append((r["devices"], common.ms(r["step"]), common.ratio(r["step"], first["step"]),
                 common.ms(r["round"]), common.ratio(r["round"], first["round"]),
                 f"{worst:.1e}", ", ".join(sorted(first["values"]))))
  print()
  print(common.table(HEADER, rows, "rrrrrrl"))
  print("GPU throughput (ResNet-101 on accelerators): not measured; no accelerator here.")
  print(common.end_line())


if __name__ == "__main__":
  main()
