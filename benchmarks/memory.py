"""Peak memory of the diagnostics from XLA's compiled `memory_analysis()`: gradient
statistics as K grows, and sharpness as the model grows.

Nothing runs: each program is compiled for CPU and XLA reports the bytes of its
arguments, outputs and temporaries (the working memory a call needs beyond its inputs
and results). Part 1 compares the training driver's streaming form (one jitted call per
chunk of up to 8 minibatches, the Welford state carried between calls; its peak is its
largest chunk's) with one `dg.gradient_stats` call on K stacked minibatches, unrolled
(the CPU default up to K = 8) and as a `lax.scan`, each under XLA:CPU's default
scheduler and the memory-optimised one the driver compiles with. Part 2 compiles one
gradient, one Hessian-vector product and the driver's chunk of 5 power iterations for
the benchmark CNN at growing widths.

    python -m benchmarks.memory
    python -m benchmarks.memory --quick     # tiny sizes (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, Sequence

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (after the path set-up for file runs)
from benchmarks import diagnostics_vs_torch as problem  # noqa: E402
from invmeasure import diagnostics as dg  # noqa: E402
from invmeasure.training import loop, step as step_lib  # noqa: E402

MIB = 2.0 ** 20
# The driver's largest chunk on CPU (`loop._DiagnosticRound`).
DRIVER_CHUNK = 8


@dataclasses.dataclass(frozen=True)
class Sizes:
  base: problem.Sizes = problem.Sizes()
  ks: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
  unrolled_max: int = 16              # one-call unrolled forms compiled up to this K
  width_scales: tuple[int, ...] = (1, 2, 4, 8)
  power_iters: int = 5


QUICK = Sizes(base=problem.QUICK, ks=(2,), unrolled_max=2, width_scales=(1,), power_iters=2)


def memory(fn: Callable, *args, options: dict | None = None) -> dict[str, float]:
  """MiB of arguments, outputs and temporaries of `jax.jit(fn)` compiled for `args`."""
  analysis = jax.jit(fn, compiler_options=options).lower(*args).compile().memory_analysis()
  return {"arguments": analysis.argument_size_in_bytes / MIB,
          "outputs": analysis.output_size_in_bytes / MIB,
          "temporaries": analysis.temp_size_in_bytes / MIB}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def stats_rows(sizes: Sizes) -> list[tuple]:
  pb = problem.make_problem(dataclasses.replace(sizes.base, k=max(sizes.ks)))
  loss_fn, params = pb.loss_fn, _abstract(pb.params)
  one = _abstract(problem.minibatch(pb.batches, 0))
  stacked = lambda k: jax.tree.map(lambda x: jax.ShapeDtypeStruct((k, *x.shape), x.dtype), one)
  state = _abstract(dg.gradient_stats_init(pb.params))
  grad_mib = dg.tree_size(pb.params) * 4 / MIB

  # The driver's accumulate: the RunState matters only through its params here.
  def chunk(p, s, minibatches):
    for minibatch in minibatches:
      s = dg.gradient_stats_update(loss_fn, s, p, minibatch)
    return s

  driver_options = loop._CPU_ROUND_OPTIONS
  chunks = sorted({min(k, DRIVER_CHUNK) for k in sizes.ks})
  driver = {c: memory(chunk, params, state, (one,) * c, options=driver_options)["temporaries"]
            for c in chunks}
  default = {c: memory(chunk, params, state, (one,) * c)["temporaries"] for c in chunks}
  stats = lambda unroll: (lambda p, b: dg.gradient_stats(loss_fn, p, b, unroll=unroll))
  rows = []
  for k in sizes.ks:
    c = min(k, DRIVER_CHUNK)
    scan = memory(stats(False), params, stacked(k))
    unrolled = ("not compiled",) * 2
    if k <= sizes.unrolled_max:
      unrolled = tuple(f"{memory(stats(True), params, stacked(k), options=o)['temporaries']:.1f}"
                       for o in (None, driver_options))
    rows.append((k, c, f"{driver[c]:.1f}", f"{default[c]:.1f}", *unrolled,
                 f"{scan['temporaries']:.1f}", f"{scan['arguments']:.1f}", f"{grad_mib:.2f}"))
  return rows


def curvature_rows(sizes: Sizes) -> list[tuple]:
  rows = []
  for scale in sizes.width_scales:
    base = sizes.base
    pb_sizes = dataclasses.replace(base, widths=tuple(w * scale for w in base.widths),
                                   hidden=base.hidden * scale, k=1)
    pb = problem.make_problem(pb_sizes)
    loss_fn, params = pb.loss_fn, _abstract(pb.params)
    batch = _abstract(problem.minibatch(pb.batches, 0))
    grad = memory(jax.grad(loss_fn), params, batch)
    hvp = memory(lambda p, b, v: dg.hvp(loss_fn, p, b, v), params, batch, params)
    fns = step_lib.make_diagnostic_fns(lambda state, minibatch: (loss_fn, minibatch),
                                       tx=None, weight_decay=0.0)

    class _State:  # the power step reads only the params of the run state
      def __init__(self, p):
        self.params = p

    power = memory(lambda p, v, prev, b: fns.power_step(_State(p), v, prev, b,
                                                        num_iters=sizes.power_iters),
                   params, params, jax.ShapeDtypeStruct((), "float32"), batch,
                   options=loop._CPU_ROUND_OPTIONS)
    num = dg.tree_size(pb.params)
    rows.append((f"widths x{scale} {pb_sizes.widths}", f"{num:,}", f"{num * 4 / MIB:.2f}",
                 f"{grad['temporaries']:.1f}", f"{hvp['temporaries']:.1f}",
                 f"{power['temporaries']:.1f}",
                 common.ratio(hvp["temporaries"], grad["temporaries"])))
  return rows


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes")
  args = parser.parse_args(argv)
  sizes = QUICK if args.quick else Sizes()
  b = sizes.base
  print(common.machine_line(f"benchmark CNN (benchmarks/diagnostics_vs_torch.py) widths "
                            f"{b.widths}, batch {b.batch} of {b.image}x{b.image}x3; "
                            "compiled for CPU; MiB of temporaries unless named"))
  print()
  print(common.table(("K", "driver: minibatches per call", "driver: temporaries",
                      "driver's chunk, default scheduler", "one call, unrolled",
                      "one call, unrolled, memory scheduler", "one call, lax.scan",
                      "one call: arguments (K minibatches)", "gradient size"),
                     stats_rows(sizes)))
  print()
  print(common.table(("model", "parameters", "params MiB", "gradient: temporaries",
                      "HVP: temporaries", f"driver's {sizes.power_iters} power iterations: "
                      "temporaries", "HVP / gradient"), curvature_rows(sizes)))
  print(common.end_line())


if __name__ == "__main__":
  main()
