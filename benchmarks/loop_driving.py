"""The looping diagnostics, called on concrete arrays, against separate jitted calls.

For each looping function of `invmeasure.diagnostics` and several lengths n (minibatches,
iterations or probes), times one plain call (as the README calls it: no jax.jit around
it, so on CPU it drives compiled chunks from Python) against n separate calls of a jitted
gradient or Hessian-vector product, its unit of work, alternating the two. Also prints
the first call's time (compilation included), which should not grow with n. Two CNNs:
one small enough that per-call overhead shows, one where the convolutions dominate.

    python -m benchmarks.loop_driving            # a few minutes on 2 cores
    python -m benchmarks.loop_driving --quick    # tiny sizes, one repetition (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from typing import Callable, Sequence

import jax

from benchmarks import common
from benchmarks import loop_lowering
from invmeasure import diagnostics as dg
from invmeasure.diagnostics import _loops

HEADER = ["model", "function", "n", "first call s", "ms per unit", "separate jitted ms",
          "ratio", "target"]
TARGET = 1.2  # at most this multiple of the separate jitted calls' time


def problems(quick: bool) -> dict[str, tuple[loop_lowering.Sizes, tuple[int, ...]]]:
  """Model name -> (its sizes, the lengths n to time)."""
  if quick:
    return {"tiny CNN": (dataclasses.replace(loop_lowering.QUICK, num_grads=4), (4,))}
  return {
      "small CNN (4, 8, 8), batch 64 of 8x8x3": (
          loop_lowering.Sizes(batch=64, image=8, widths=(4, 8, 8), num_grads=128), (8, 32, 128)),
      "CNN (32, 64, 64), batch 64 of 32x32x3": (
          loop_lowering.Sizes(num_grads=32), (8, 32)),
  }


def calls(loss_fn, params, batches, n: int) -> dict[str, tuple[str, Callable[[], object]]]:
  """Function name -> (its unit of work, a call doing n units)."""
  batch = jax.tree.map(lambda x: x[0], batches)
  key = jax.random.key(0)
  first_n = jax.tree.map(lambda x: x[:n], batches)
  return {
      "gradient_stats": ("grad", lambda: dg.gradient_stats(loss_fn, params, first_n)),
      "sharpness": ("hvp", lambda: dg.sharpness(loss_fn, params, batch, key=key,
                                            num_iters=n, tol=-1.0)),  # never stops early
      "hessian_trace": ("hvp", lambda: dg.hessian_trace(loss_fn, params, batch, key=key,
                                                        num_samples=n)),
      "top_hessian_eigenvalues (k=3)": ("hvp", lambda: dg.top_hessian_eigenvalues(
          loss_fn, params, batch, key=key, k=min(3, n), num_iters=n)),
      "spectral_density (2 probes)": ("hvp", lambda: dg.spectral_density(
          loss_fn, params, batch, key=key, num_probes=2, num_iters=max(1, n // 2))),
  }


def units(loss_fn, params, batches) -> dict[str, Callable[[int], object]]:
  """Unit name -> n separate jitted calls of it."""
  grad = jax.jit(jax.value_and_grad(loss_fn))
  hvp = jax.jit(functools.partial(dg.hvp, loss_fn))
  batch = jax.tree.map(lambda x: x[0], batches)
  split = [jax.tree.map(lambda x, k=k: x[k], batches) for k in range(len(batches["label"]))]
  return {"grad": lambda n: [grad(params, split[k]) for k in range(n)],
          "hvp": lambda n: [hvp(params, batch, params) for _ in range(n)]}


def rows(name: str, sizes, lengths: Sequence[int], repeats: int):
  params, loss_fn, batches = loop_lowering.make_problem(sizes)
  unit_calls = units(loss_fn, params, batches)
  for n in lengths:
    for function, (unit, call) in calls(loss_fn, params, batches, n).items():
      _, first = common.timed(call)
      times = common.interleaved_ms(
          {"call": call, "units": functools.partial(unit_calls[unit], n)}, repeats,
          per_call={"call": n, "units": n})
      ratio = times["call"] / times["units"]
      yield [name, function, n, f"{first:.2f}", common.ms(times["call"]),
             common.ms(times["units"]), f"{ratio:.2f}x", "yes" if ratio <= TARGET else "no"]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
  parser.add_argument("--repeats", type=int, default=5, help="timed repetitions")
  args = parser.parse_args(argv)
  repeats = 1 if args.quick else args.repeats
  print(common.machine_line(f"chunks of {_loops.CHUNK} steps; median of {repeats}; "
                            f"target: ratio <= {TARGET}x"))
  start = time.perf_counter()
  table_rows = []
  for name, (sizes, lengths) in problems(args.quick).items():
    table_rows += list(rows(name, sizes, lengths, repeats))
  print(common.table(HEADER, table_rows, "llrrrrrl"))
  ratios = [float(r[6][:-1]) for r in table_rows]
  print(f"geometric mean ratio {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x, "
        f"worst {max(ratios):.2f}x; wall {time.perf_counter() - start:.0f} s")
  print(common.end_line())


if __name__ == "__main__":
  main()
