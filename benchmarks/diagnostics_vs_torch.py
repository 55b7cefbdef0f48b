"""invmeasure.diagnostics against the paper's PyTorch procedure, side by side on one CPU.

One small CNN is defined twice, in Flax Linen and in PyTorch, and the Flax weights are
copied into the PyTorch model so that both compute the same function (the losses are
checked to agree). Each row times one diagnostic in both frameworks in the same process,
alternating the two so that load from other processes falls on both; JAX compile time is
excluded from the rows and printed on its own. PyTorch is optional: without it the
PyTorch columns read "n/a".

The last rows time a whole diagnostic round as the training driver runs it
(`invmeasure.training.loop._DiagnosticRound` over `step.make_diagnostic_fns`, every
quantity of its metric row) in its chunked form and one minibatch and one power
iteration per call (the form before chunking), against the paper's procedure for the
same quantities.

    python -m benchmarks.diagnostics_vs_torch            # batch 64 of 32x32x3, K=8
    python -m benchmarks.diagnostics_vs_torch --k 16
    python -m benchmarks.diagnostics_vs_torch --quick    # tiny model, K=2, one repetition
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (after the path set-up for file runs)
from invmeasure import diagnostics as dg  # noqa: E402
from invmeasure.training import loop, state as state_lib, step as step_lib  # noqa: E402

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # CI installs no PyTorch; the table still prints, with "n/a"
  torch = None

HEADER = "| quantity | JAX ms | PyTorch ms | JAX/PyTorch | notes |"
LOSS_ATOL = 1e-4
UNROLL_CHOICES = {"default": None, "true": True, "false": False}
# The optimizer whose update the driver's round measures curvature along (the paper's).
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Model, data and measurement sizes; `QUICK` is the CI smoke setting."""
  batch: int = 64
  image: int = 32
  widths: tuple[int, ...] = (32, 64, 64)
  hidden: int = 128
  num_classes: int = 10
  k: int = 8
  power_iters: int = 5
  repeats: int = 7


# Two power iterations keep the unrolled compile (most of the run) to seconds.
QUICK = Sizes(batch=8, image=8, widths=(4, 8, 8), hidden=16, k=2, power_iters=2, repeats=1)


# ----------------------------------------------------------------------------- models


class CNN(nn.Module):
  """3x3 convolutions, each with ReLU and 2x2 average pooling, then a two-layer head."""
  widths: Sequence[int]
  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.widths:
      x = nn.avg_pool(nn.relu(nn.Conv(width, (3, 3))(x)), (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
    return nn.Dense(self.num_classes)(x)


def torch_cnn(sizes: Sizes) -> "torch.nn.Module":
  """The same network in PyTorch (NCHW; padding 1 is Flax's SAME for a 3x3 kernel)."""
  tnn = torch.nn
  layers, channels = [], 3
  for width in sizes.widths:
    layers += [tnn.Conv2d(channels, width, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2)]
    channels = width
  side = sizes.image // 2 ** len(sizes.widths)
  layers += [tnn.Flatten(), tnn.Linear(channels * side * side, sizes.hidden), tnn.ReLU(),
             tnn.Linear(sizes.hidden, sizes.num_classes)]
  return tnn.Sequential(*layers)


def torch_layout(tree, sizes: Sizes) -> list[np.ndarray]:
  """A params-shaped pytree as arrays in `torch_cnn(sizes).parameters()` order and layout."""
  out = []
  for i in range(len(sizes.widths)):
    conv = tree[f"Conv_{i}"]
    out += [common.torch_conv_weight(conv["kernel"]), np.asarray(conv["bias"])]
  side = sizes.image // 2 ** len(sizes.widths)
  # Flax flattens (h, w, c), PyTorch (c, h, w): reorder the first dense layer's rows.
  first = np.asarray(tree["Dense_0"]["kernel"]).reshape(side, side, sizes.widths[-1], -1)
  out += [first.transpose(2, 0, 1, 3).reshape(-1, first.shape[-1]).T,
          np.asarray(tree["Dense_0"]["bias"])]
  out += [np.asarray(tree["Dense_1"]["kernel"]).T, np.asarray(tree["Dense_1"]["bias"])]
  return [np.array(a, np.float32, order="C") for a in out]  # writable copies for torch


# ----------------------------------------------------------------------------- problem


@dataclasses.dataclass
class Problem:
  """Everything both frameworks compute on: weights, K minibatches, a start vector."""
  sizes: Sizes
  loss_fn: Callable
  params: object
  batches: dict        # leaves (K, batch, ...), NHWC images
  start: object        # power-iteration start vector, a pytree like params


def make_problem(sizes: Sizes) -> Problem:
  model = CNN(sizes.widths, sizes.hidden, sizes.num_classes)
  rng = np.random.default_rng(0)
  shape = (sizes.k, sizes.batch, sizes.image, sizes.image, 3)
  batches = {"image": jnp.asarray(rng.normal(size=shape), jnp.float32),
             "label": jnp.asarray(rng.integers(0, sizes.num_classes, size=shape[:2]))}
  params = model.init(jax.random.key(0), batches["image"][0])["params"]

  def loss_fn(p, batch):
    logp = jax.nn.log_softmax(model.apply({"params": p}, batch["image"]))
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))

  start = dg.tree_random_like(jax.random.key(1), params)
  return Problem(sizes, loss_fn, params, batches, start)


def minibatch(batches: dict, k: int) -> dict:
  return jax.tree.map(lambda leaf: leaf[k], batches)


# ----------------------------------------------------------------------------- JAX side


def compile_timed(fn: Callable, *args) -> tuple[Callable, float]:
  """`jax.jit(fn)` compiled for `args`, and the seconds lowering and compiling took."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def compile_jax(pb: Problem, unroll: bool | None) -> tuple[dict[str, Callable],
                                                          dict[str, float]]:
  """The jitted JAX functions, compiled ahead of the timing, and their compile seconds."""
  loss_fn, params, iters = pb.loss_fn, pb.params, pb.sizes.power_iters
  b0, init = minibatch(pb.batches, 0), dg.gradient_stats_init(params)
  specs = {
      "grad": (jax.value_and_grad(loss_fn), (params, b0)),
      "hvp": (lambda p, b, v: dg.hvp(loss_fn, p, b, v), (params, b0, pb.start)),
      "stats": (lambda p, bs: dg.gradient_stats(loss_fn, p, bs, unroll=unroll),
                (params, pb.batches)),
      "update": (functools.partial(dg.gradient_stats_update, loss_fn), (init, params, b0)),
      "finalize": (dg.gradient_stats_finalize, (init,)),
      "sharpness": (lambda p, b, v: dg.sharpness(loss_fn, p, b, init=v, num_iters=iters,
                                                 tol=0.0), (params, b0, pb.start)),
      "directional": (lambda p, b, v: dg.directional_sharpness(loss_fn, p, b, v),
                      (params, b0, pb.start)),
  }
  compiled = {name: compile_timed(fn, *args) for name, (fn, args) in specs.items()}
  return ({name: c[0] for name, c in compiled.items()},
          {name: c[1] for name, c in compiled.items()})


def jax_calls(pb: Problem, fns: dict[str, Callable]) -> dict[str, Callable[[], object]]:
  """Zero-argument callables, one per timed row."""
  params, batches = pb.params, pb.batches
  split = [minibatch(batches, k) for k in range(pb.sizes.k)]

  def streaming():
    state = dg.gradient_stats_init(params)
    for batch in split:
      state = fns["update"](state, params, batch)
    return fns["finalize"](state)

  calls = {
      "grad": lambda: fns["grad"](params, split[0]),
      "hvp": lambda: fns["hvp"](params, split[0], pb.start),
      "k_grads": lambda: [fns["grad"](params, b) for b in split],
      "stats": lambda: fns["stats"](params, batches),
      "streaming": streaming,
      "sharpness": lambda: fns["sharpness"](params, split[0], pb.start),
  }
  calls["directional"] = lambda: fns["directional"](params, split[0], pb.start)

  def one_call_round():
    """A training loop calling the jitted diagnostics one after the other."""
    stats = calls["stats"]()
    return stats, calls["sharpness"](), fns["directional"](params, split[0], stats.mean_gradient)

  calls["round"] = one_call_round
  return calls


class Driver:
  """The training driver's diagnostic round on the benchmark's CNN, on one device."""

  def __init__(self, pb: Problem):
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                     optax.sgd(LEARNING_RATE, momentum=MOMENTUM))
    state = state_lib.init_run_state(lambda key: {"params": pb.params}, tx, jax.random.key(0))
    self.state = jax.device_put(state._replace(sharpness_vector=pb.start), replicated)
    fns = step_lib.make_diagnostic_fns(lambda state, minibatch: (pb.loss_fn, minibatch), tx,
                                       WEIGHT_DECAY)
    self.minibatches = [jax.device_put(minibatch(pb.batches, k), rows)
                        for k in range(pb.sizes.k)]
    iters = pb.sizes.power_iters
    self.rounds = {"driver": loop._DiagnosticRound(fns, replicated, iters, 0.0),
                   "driver_single": loop._DiagnosticRound(fns, replicated, iters, 0.0,
                                                          minibatches_per_call=1,
                                                          power_iters_per_call=1)}
    self.compile_s = {}
    for name in self.rounds:  # the first call compiles every piece
      (self.row, _), self.compile_s[f"{name} round (first call)"] = _timed(
          lambda name=name: self.rounds[name](self.state, self.minibatches))
    # Curvature along a direction (one HVP each in the paper's procedure): the row's
    # sharpness fields other than the top eigenvalue's.
    top = ("sharpness", "sharpness_residual", "sharpness_iters")
    self.directions = sorted(k for k in self.row if "sharpness" in k and k not in top)

  def calls(self) -> dict[str, Callable[[], object]]:
    calls = {name: (lambda r=r: r(self.state, self.minibatches)[0])
             for name, r in self.rounds.items()}
    calls["driver_stats"] = lambda: self.rounds["driver"].gradient_stats(self.state,
                                                                         self.minibatches)
    return calls


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def jax_values(calls: dict[str, Callable[[], object]], driver: Driver) -> dict[str, float]:
  stats, top, directional = calls["round"]()
  row = driver.row
  return {"loss": float(calls["grad"]()[0]), "grad_norm": float(stats.grad_norm),
          "noise_norm": float(stats.noise_norm), "eigenvalue": float(top.eigenvalue),
          "gradient_sharpness": float(directional),
          "driver grad_norm": float(row["grad_norm"]),
          "driver noise_norm": float(row["noise_norm"]),
          "driver sharpness": float(row["sharpness"]),
          "driver gradient_sharpness": float(row["gradient_sharpness"])}


# ----------------------------------------------------------------------------- PyTorch side


class TorchSide:
  """The paper's procedures: backward() for gradients, double backward for HVPs."""

  def __init__(self, pb: Problem, channels_last: bool = False):
    sizes = pb.sizes
    self.model = torch_cnn(sizes)
    self.params = list(self.model.parameters())
    common.copy_to_torch(self.params, torch_layout(pb.params, sizes))
    images = np.asarray(pb.batches["image"]).transpose(0, 1, 4, 2, 3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
      self.model = self.model.to(memory_format=fmt)
    self.images = [torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=fmt)
                   for x in images]
    self.labels = [torch.from_numpy(np.asarray(y, np.int64)) for y in pb.batches["label"]]
    self.start = [torch.from_numpy(a) for a in torch_layout(pb.start, sizes)]
    self.k, self.iters = sizes.k, sizes.power_iters

  def loss(self, k: int) -> "torch.Tensor":
    return F.cross_entropy(self.model(self.images[k]), self.labels[k])

  def grad(self, k: int = 0) -> "torch.Tensor":
    self.model.zero_grad(set_to_none=True)
    loss = self.loss(k)
    loss.backward()
    return loss

  def hvp(self, v: list, k: int = 0) -> tuple:
    grads = torch.autograd.grad(self.loss(k), self.params, create_graph=True)
    return torch.autograd.grad(_dot(grads, v), self.params)

  def gradient_stats(self) -> tuple[float, float, list]:
    """K gradients for the mean, then K more for E||g_k - g_bar||^2."""
    mean = [torch.zeros_like(p) for p in self.params]
    for k in range(self.k):
      self.grad(k)
      with torch.no_grad():
        for m, p in zip(mean, self.params):
          m.add_(p.grad, alpha=1.0 / self.k)
    noise = 0.0
    for k in range(self.k):
      self.grad(k)
      with torch.no_grad():
        noise += sum(float(((p.grad - m) ** 2).sum()) for m, p in zip(mean, self.params))
    return float(_norm(mean)), (noise / self.k) ** 0.5, mean

  def directional(self, v: list, k: int = 0) -> float:
    """v^T H v / ||v||^2 by one double-backward HVP."""
    return float(_dot(v, self.hvp(v, k)) / _dot(v, v))

  def sharpness(self, reuse_graph: bool = False) -> float:
    """Power iteration from the shared start, one double-backward HVP per iteration."""
    v = _scale(self.start, 1.0 / _norm(self.start))
    grads = (torch.autograd.grad(self.loss(0), self.params, create_graph=True)
             if reuse_graph else None)
    for _ in range(self.iters):
      hv = (torch.autograd.grad(_dot(grads, v), self.params, retain_graph=True)
            if reuse_graph else self.hvp(v))
      eigenvalue = float(_dot(v, hv))
      v = _scale(hv, 1.0 / _norm(hv))
    return eigenvalue

  def round(self) -> tuple[float, float, float, float]:
    """Gradient statistics, sharpness and the curvature along the mean gradient."""
    grad_norm, noise_norm, mean = self.gradient_stats()
    return grad_norm, noise_norm, self.sharpness(), self.directional(mean)

  def driver_round(self, num_directions: int) -> None:
    """The quantities of the driver's row: the round above, one minibatch gradient (the
    update's direction) and the curvature along it (`num_directions` - 1 more HVPs, on
    the first minibatch and the next)."""
    self.round()
    self.grad(0)
    update = [p.grad.detach().clone() for p in self.params]
    for i in range(num_directions - 1):
      self.directional(update, k=i % self.k)

  def calls(self) -> dict[str, Callable[[], object]]:
    return {
        "grad": self.grad,
        "hvp": lambda: self.hvp(self.start),
        "k_grads": lambda: [self.grad(k) for k in range(self.k)],
        "stats": self.gradient_stats,
        "streaming": self.gradient_stats,
        "driver_stats": self.gradient_stats,
        "sharpness": self.sharpness,
        "sharpness_reuse": lambda: self.sharpness(reuse_graph=True),
        "directional": lambda: self.directional(self.start),
        "round": self.round,
    }


def _dot(xs, ys) -> "torch.Tensor":
  return sum((x * y).sum() for x, y in zip(xs, ys))


def _norm(xs) -> "torch.Tensor":
  return _dot(xs, xs).sqrt()


def _scale(xs, alpha) -> list:
  return [alpha * x.detach() for x in xs]


# ----------------------------------------------------------------------------- timing


def interleaved_medians(pairs: dict[str, tuple[Callable | None, Callable | None]],
                        repeats: int) -> dict[str, tuple[float, float]]:
  """Median ms of each callable; every repetition runs all of them in turn."""
  run = lambda fn: jax.block_until_ready(fn())
  for jax_fn, torch_fn in pairs.values():
    for fn in (jax_fn, torch_fn):
      if fn is not None:
        run(fn)
  times = {name: ([], []) for name in pairs}
  for _ in range(repeats):
    for name, fns in pairs.items():
      for fn, out in zip(fns, times[name]):
        if fn is not None:
          start = time.perf_counter()
          run(fn)
          out.append(1e3 * (time.perf_counter() - start))
  nan = float("nan")
  return {name: tuple(statistics.median(t) if t else nan for t in ts)
          for name, ts in times.items()}


# ----------------------------------------------------------------------------- report


def _ms(x: float) -> str:
  return "n/a" if np.isnan(x) else f"{x:.1f}"


def _ratio(a: float, b: float, target: str = "") -> str:
  if np.isnan(a) or np.isnan(b):
    return "n/a"
  return f"{a / b:.2f}x" + (f" ({target})" if target else "")


def timing_table(t: dict[str, tuple[float, float]], k: int, iters: int,
                 num_directions: int) -> str:
  jk = t["k_grads"][0]
  driver_torch = (f"PyTorch: the round above, 1 gradient and {num_directions - 1} more "
                  "HVPs (the row's other directional curvatures)")
  rows = [
      ("gradient, 1 minibatch", "grad", "JAX value_and_grad; PyTorch loss.backward()"),
      ("Hessian-vector product", "hvp",
       f"HVP/gradient: JAX {_ratio(t['hvp'][0], t['grad'][0])}, PyTorch "
       f"{_ratio(t['hvp'][1], t['grad'][1])}; JAX jvp of grad, PyTorch double backward"),
      (f"{k} gradients, separate calls", "k_grads", "reference for the two rows below"),
      (f"gradient stats K={k}, dg.gradient_stats", "stats",
       f"{_ratio(t['stats'][0], jk, 'target <= 1.1')} of {k} JAX gradients; "
       f"PyTorch: paper's {2 * k} gradients (mean pass, then noise pass)"),
      (f"gradient stats K={k}, streaming update x{k}", "streaming",
       f"{_ratio(t['streaming'][0], jk, 'target <= 1.1')} of {k} JAX gradients; "
       "PyTorch as above"),
      (f"gradient stats K={k}, the driver's chunks", "driver_stats",
       f"{_ratio(t['driver_stats'][0], jk, 'target <= 1.1')} of {k} JAX gradients; up to 8 "
       "minibatches per call, memory-optimised scheduler; PyTorch as above"),
      (f"sharpness, {iters} power iterations", "sharpness",
       f"PyTorch {iters} double-backward HVPs; reusing one create_graph backward: "
       f"{_ms(t['sharpness_reuse'][1])} ms"),
      ("directional sharpness", "directional",
       "JAX forward-over-forward; PyTorch one double-backward HVP"),
      (f"diagnostic round: stats K={k} + {iters} power its + directional", "round",
       "target JAX/PyTorch < 1.0; JAX: the three jitted library calls above"),
      ("diagnostic round, invmeasure.training driver", "driver",
       f"target < 1.0; chunks of up to 8 gradients and 5 power iterations per call, and "
       f"the row's summary; {driver_torch}"),
      ("diagnostic round, driver, 1 minibatch / iteration per call", "driver_single",
       f"the driver before chunking; PyTorch as above"),
  ]
  lines = [HEADER, "|---|---:|---:|---:|---|"]
  for label, key, note in rows:
    jax_ms, torch_ms = t[key]
    lines.append(f"| {label} | {_ms(jax_ms)} | {_ms(torch_ms)} | "
                 f"{_ratio(jax_ms, torch_ms)} | {note} |")
  return "\n".join(lines)


def agreement_table(jv: dict[str, float], tv: dict[str, float] | None) -> str:
  lines = ["| value | JAX | PyTorch | relative difference |", "|---|---:|---:|---:|"]
  for name in jv:
    if tv is None:
      lines.append(f"| {name} | {jv[name]:.6g} | n/a | n/a |")
    else:
      rel = abs(jv[name] - tv[name]) / max(abs(tv[name]), 1e-30)
      lines.append(f"| {name} | {jv[name]:.6g} | {tv[name]:.6g} | {rel:.1e} |")
  return "\n".join(lines)


def compile_table(compile_s: dict[str, float]) -> str:
  lines = ["| JAX function (jit) | compile s |", "|---|---:|"]
  lines += [f"| {name} | {s:.2f} |" for name, s in compile_s.items()]
  return "\n".join(lines)


def torch_values(side: TorchSide) -> dict[str, float]:
  grad_norm, noise_norm, eigenvalue, directional = side.round()
  values = {"loss": float(side.grad().detach()), "grad_norm": grad_norm,
            "noise_norm": noise_norm, "eigenvalue": eigenvalue,
            "gradient_sharpness": directional}
  # The driver measures the same quantities (its sharpness from the same start vector).
  values.update({"driver grad_norm": grad_norm, "driver noise_norm": noise_norm,
                 "driver sharpness": eigenvalue, "driver gradient_sharpness": directional})
  return values


def describe(sizes: Sizes, num_params: int, args: argparse.Namespace, torch_on: bool) -> str:
  versions = f"jax {jax.__version__}, torch {torch.__version__ if torch else 'not installed'}"
  layout = "NHWC (channels_last)" if args.torch_channels_last else "NCHW"
  setup = f"PyTorch threads {args.threads}, {layout}" if torch_on else "no PyTorch"
  return (f"{versions}; {platform.machine()}, {os.cpu_count()} cores, {setup}; CNN widths "
          f"{sizes.widths} + dense {sizes.hidden}, {num_params} params; batch {sizes.batch} "
          f"of {sizes.image}x{sizes.image}x3; K={sizes.k}; gradient_stats unroll="
          f"{args.stats_unroll}; median of {sizes.repeats} interleaved runs after a warm-up; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load {os.getloadavg()[0]:.2f}")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny model, K=2, one repetition")
  parser.add_argument("--k", type=int, default=None, help="minibatches K (default 8)")
  parser.add_argument("--repeats", type=int, default=None, help="timed repetitions")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch.set_num_threads (default 2; 1 with --quick, which a busy "
                           "machine's oversubscribed OpenMP threads slow down the most)")
  parser.add_argument("--torch-channels-last", action="store_true",
                      help="run the PyTorch model in NHWC (channels_last) memory format")
  parser.add_argument("--stats-unroll", choices=sorted(UNROLL_CHOICES), default="default",
                      help="unroll= passed to dg.gradient_stats")
  args = parser.parse_args(argv)
  args.threads = args.threads or (1 if args.quick else 2)
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse(argv)
  sizes = QUICK if args.quick else Sizes()
  sizes = dataclasses.replace(sizes, k=args.k or sizes.k, repeats=args.repeats or sizes.repeats)
  pb = make_problem(sizes)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(pb.params))
  side = None
  if torch is not None:
    torch.set_num_threads(args.threads)
    side = TorchSide(pb, channels_last=args.torch_channels_last)
  print(describe(sizes, num_params, args, side is not None))
  fns, compile_s = compile_jax(pb, UNROLL_CHOICES[args.stats_unroll])
  calls = jax_calls(pb, fns)
  driver = Driver(pb)
  compile_s.update(driver.compile_s)
  calls.update(driver.calls())
  jv = jax_values(calls, driver)
  tv = torch_values(side) if side else None
  if tv is not None:
    common.check_same_loss(jv["loss"], tv["loss"], LOSS_ATOL)
  torch_calls = side.calls() if side else {}
  if side:
    num_directions = len(driver.directions)
    torch_calls["driver"] = torch_calls["driver_single"] = (
        lambda: side.driver_round(num_directions))
  pairs = {name: (calls.get(name), torch_calls.get(name))
           for name in list(calls) + ["sharpness_reuse"]}
  times = interleaved_medians(pairs, sizes.repeats)
  print()
  print(timing_table(times, sizes.k, sizes.power_iters, len(driver.directions)))
  print()
  print(agreement_table(jv, tv))
  print()
  print(compile_table(compile_s))
  print(f"(load at the end: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
  main()
