"""What each per-step diagnostic (`config.diagnostics.per_step`) costs the train step.

The driver's own jitted train step (`loop.jit_train_step`, buffers donated) with nothing,
each quantity alone and all three, on device-resident batches of random images, timed
side by side (interleaved repeats, medians): the quickstart's network (digits, batch 32,
its augmentation on) and CIFAR ResNet-18 at batch 16. Target: grad_norm and update_norm
within 5% of the bare step.

    python -m benchmarks.per_step [--quick]
"""

from __future__ import annotations

import argparse
import importlib

import jax
import numpy as np

from benchmarks import common
from invmeasure.training import loop

VARIANTS = {"bare step": "", "grad_norm": "grad_norm", "update_norm": "update_norm",
            "update_sharpness": "update_sharpness",
            "all three": "grad_norm,update_norm,update_sharpness"}


def _config(name: str, quick: bool, per_step: str):
  config = importlib.import_module(f"configs.{name}").get_config()
  config.diagnostics.per_step = per_step
  if name == "cifar10_resnet18":
    config.batch_size = 16
    config.model.width = 4 if quick else 64
  elif quick:
    config.model.widths = (4,)
  return config


def _stepper(config, steps: int):
  """A callable that runs `steps` train steps from a fixed state on one fixed batch."""
  plan = loop.make_plan(config, abstract=True)  # no data read: random images below
  shapes = plan.task.abstract_batch(config.batch_size, train=True)
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 10 if k == "label" else 256, s.shape).astype(s.dtype)
           for k, s in shapes.items()}
  batch = jax.device_put(batch, plan.batch_sharding)
  step = loop.jit_train_step(plan)
  state = [loop.init_state_fn(plan)(loop.init_key(config))]

  def run():
    for _ in range(steps):
      state[0], metrics = step(state[0], batch)
    return metrics
  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
  args = parser.parse_args()
  print(common.machine_line("per-step diagnostics in the driver's train step"))
  models = {"quickstart": (30, 15), "cifar10_resnet18": (3, 9)}
  if args.quick:  # the small network only: ResNet-18 would compile five more steps
    models = {"quickstart": (2, 1)}
  rows = []
  for name, (steps, repeats) in models.items():
    fns = {variant: _stepper(_config(name, args.quick, per_step), steps)
           for variant, per_step in VARIANTS.items()}
    times = common.interleaved_ms(fns, repeats, per_call={v: steps for v in fns})
    for variant, t in times.items():
      rows.append((name, variant, common.ms(t), common.ratio(t, times["bare step"])))
  print(common.table(["model", "tracked at every step", "ms per step", "vs bare step"], rows))
  print(common.end_line())


if __name__ == "__main__":
  main()
