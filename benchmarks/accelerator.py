"""The paper's full-size programs on whatever accelerator is present: one command.

    python -m benchmarks.accelerator            # on a GPU or TPU host
    python -m benchmarks.accelerator --quick    # tiny sizes, runs anywhere (the tests do)

Prints, on all local devices (the batch split over them, as the driver does):
- the device's measured matmul rate (a large square product) in float32 and bfloat16,
  the yardstick of FLOP utilisation;
- the ResNet-101 train step (configs/imagenet_resnet101.py, global batch 256) in float32
  and bfloat16 compute: images/s, its FLOPs (XLA's cost analysis) and their rate as a
  fraction of the matmul rate of the same dtype (target: bfloat16 >= 45%);
- a diagnostic round of K = 16 minibatches with 5 power iterations (the driver's
  `_DiagnosticRound`): seconds per round and per minibatch, against 16 train steps
  (target: <= 1.5x);
- the Transformer-XL train step (configs/wt103_transformerxl.py): tokens/s.
Batches are random (no data is read); each time is the median over repeats after a
compiling call. `--quick` swaps in the configs' `:tiny` sizes and small products.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from configs import imagenet_resnet101, wt103_transformerxl
from invmeasure.data import text_sources
from invmeasure.training import loop


def _median_seconds(fn, repeats: int) -> float:
  common.block(fn())  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    common.block(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_rate(n: int, dtype, repeats: int) -> float:
  """FLOP/s of an n x n by n x n product on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  product = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / _median_seconds(lambda: product(a), repeats)


def _random_batch(plan, batch_size: int, train: bool, high: int) -> dict:
  shapes = plan.task.abstract_batch(batch_size, train)
  rng = np.random.default_rng(0)
  batch = {}
  for name, s in shapes.items():
    if name == "memory_length":
      batch[name] = np.zeros(s.shape, s.dtype)
    elif name == "augment_index":
      batch[name] = np.arange(s.shape[0], dtype=s.dtype)
    else:
      batch[name] = rng.integers(0, high if name != "image" else 256, s.shape).astype(s.dtype)
  return jax.device_put(batch, plan.batch_sharding)


class Steps:
  """The driver's jitted train step on one random global batch, and its XLA FLOPs."""

  def __init__(self, config, high: int):
    self.plan = loop.make_plan(config, abstract=True)
    self.batch = _random_batch(self.plan, config.batch_size, True, high)
    self.state = loop.init_state_fn(self.plan)(loop.init_key(config))
    self.step = loop.jit_train_step(self.plan)
    analysis = self.step.lower(self.state, self.batch).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    # A partitioned program's cost analysis counts one device's share.
    self.flops = float(analysis.get("flops", float("nan"))) * jax.device_count()

  def run(self, steps: int):
    def go():
      for _ in range(steps):
        self.state, metrics = self.step(self.state, self.batch)
      return metrics
    return go


def _resnet_config(quick: bool, dtype: str):
  config = imagenet_resnet101.get_config("tiny" if quick else "")
  config.model.dtype = dtype
  config.diagnostics.num_minibatches = 2 if quick else 16
  config.diagnostics.sharpness_iters = 1 if quick else 5
  if quick:
    config.batch_size = config.diagnostics.batch_size = 2
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
  args = parser.parse_args()
  quick = args.quick
  repeats, steps = (1, 1) if quick else (5, 10)
  device = jax.devices()[0]
  print(common.machine_line(f"{jax.device_count()} x {device.device_kind}"))

  n = 256 if quick else 8192
  rates = {dtype: matmul_rate(n, getattr(jnp, dtype), repeats)
           for dtype in ("float32", "bfloat16")}
  rows = [(f"matmul {n}x{n}, {dtype}", "", f"{rate / 1e12:.2f} TFLOP/s", "")
          for dtype, rate in rates.items()]

  for dtype in ("float32", "bfloat16"):
    config = _resnet_config(quick, dtype)
    resnet = Steps(config, high=1000)
    seconds = _median_seconds(resnet.run(steps), repeats) / steps
    used = resnet.flops / seconds
    rows.append((f"ResNet-{config.model.depth} train step, {dtype}", config.batch_size,
                 f"{config.batch_size / seconds:,.1f} images/s",
                 f"{used / 1e12:.2f} TFLOP/s = {used / rates[dtype]:.0%} of matmul"))
    if dtype == "float32":
      step_seconds = seconds
      round_config = config

  plan = loop.make_plan(round_config, abstract=True)
  state = loop.init_state_fn(plan)(loop.init_key(round_config))
  k, iters = round_config.diagnostics.num_minibatches, round_config.diagnostics.sharpness_iters
  size = round_config.diagnostics.batch_size
  minibatches = [_random_batch(plan, size, False, 1000) for _ in range(k)]
  diagnostic_round = loop._DiagnosticRound(plan.task.diagnostic_fns(), plan.replicated,
                                           iters, 0.0)
  round_seconds = _median_seconds(lambda: diagnostic_round(state, minibatches)[1], repeats)
  rows.append((f"diagnostic round, K={k}, {iters} power iterations, float32", size,
               f"{round_seconds:.3f} s ({round_seconds / k * 1e3:.1f} ms per minibatch)",
               f"{round_seconds / (k * step_seconds):.2f}x {k} train steps"))

  lm_config = wt103_transformerxl.get_config("tiny" if quick else "")
  lm = Steps(lm_config, high=text_sources.train_sizes(lm_config.dataset)[1])
  seconds = _median_seconds(lm.run(steps), repeats) / steps
  tokens = lm_config.batch_size * lm.plan.task.segments.tgt_len
  rows.append(("Transformer-XL train step, float32", lm_config.batch_size,
               f"{tokens / seconds:,.0f} tokens/s",
               f"{lm.flops / seconds / 1e12:.2f} TFLOP/s = "
               f"{lm.flops / seconds / rates['float32']:.0%} of matmul"))
  print(common.table(["program", "global batch", "throughput", "FLOP rate"], rows))
  print(common.end_line())


if __name__ == "__main__":
  main()
