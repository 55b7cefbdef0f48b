"""invmeasure.diagnostics against its PyTorch peers, PyHessian 0.1 and hessian-eigenthings.

One small tanh CNN (no BatchNorm, no dropout) on the bundled 8x8 digits is defined in
Flax Linen and in PyTorch, the Flax weights copied into the PyTorch model and the two
losses checked to agree, so that every library measures the Hessian of one function on
one batch (512 examples by default). Rows: the top-3 Hessian eigenvalues, sharpness by
power iteration, the Hutchinson trace, a stochastic-Lanczos-quadrature density and the
gradient statistics over K = 16 minibatches (which neither peer has: a plain PyTorch
loop stands in for them). invmeasure is called as its README shows, a plain call, and
timed after a first call that compiles (that first call's seconds have their own
column); the libraries run alternately so that load falls on all of them alike, on the
same number of threads (PyTorch's set to the cores; XLA uses all of them by default).

Each result is checked against a dense float64 Hessian of the same loss (numpy eigh):
relative errors of eigenvalues and gradient statistics; for the stochastic trace and
the SLQ estimates of tr(H) and tr(H^2), the error in units of the estimator's standard
error. HVPs: the Hessian-vector products each library computed (the power iterations
stop early, each on its own rule).

The peers: each PyHessian call includes building its `hessian` object (one backward
pass with create_graph, whose graph its HVPs reuse); its `density` calls the removed
`torch.eig`, so the benchmark lends it `torch.linalg.eigh` for that call.
hessian-eigenthings 1.0 has no `compute_hessian_eigenthings`: its `HessianOperator`
over a loader of the one batch with `lanczos`, `power_iteration_one`, `hutchinson` and
`spectral_density` stand in; it recomputes the gradient graph for every HVP. Without
PyTorch (or either peer) the peer columns read "n/a".

    python -m benchmarks.peers                # 512 examples, K = 16, 5 repetitions
    python -m benchmarks.peers --quick        # a 207-parameter CNN, 16 examples, CI
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import math
import os
import sys
import warnings
from typing import Callable, Sequence
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (after the path set-up for file runs)
from invmeasure import diagnostics as dg  # noqa: E402
from invmeasure.data import sources  # noqa: E402

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # CI installs no PyTorch; the table still prints, with "n/a"
  torch = F = None
try:
  import pyhessian
except ImportError:
  pyhessian = None
try:
  import hessian_eigenthings as het
except ImportError:
  het = None

HEADER = ("diagnostic", "invmeasure ms", "invmeasure first call s", "PyHessian ms",
          "eigenthings ms", "invmeasure/PyHessian", "invmeasure/eigenthings",
          "HVPs invmeasure / PyHessian / eigenthings", "invmeasure error", "PyHessian error",
          "eigenthings error", "notes")
LOSS_ATOL = 1e-5
SIDES = ("invmeasure", "pyhessian", "eigenthings")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Data and iteration counts; `QUICK` is the CI smoke setting."""
  widths: tuple[int, int] = (8, 12)  # the two convolutions' channels
  examples: int = 512        # one batch of digits
  minibatches: int = 16      # K, for the gradient statistics (examples split evenly)
  top_k: int = 3             # eigenvalues of the first row
  lanczos_iters: int = 40    # invmeasure's and eigenthings' Lanczos steps
  peer_max_iters: int = 100  # PyHessian's power iterations per eigenvalue
  power_iters: int = 100     # sharpness: the most HVPs of each power iteration
  tol: float = 1e-3          # power iterations' relative-change tolerance
  trace_probes: int = 200
  slq_probes: int = 10
  slq_iters: int = 60
  repeats: int = 5


# A ~200-parameter network: the CI's unoptimised XLA builds the dense Hessian in seconds.
QUICK = Sizes(widths=(2, 3), examples=16, minibatches=2, lanczos_iters=3, peer_max_iters=3,
              power_iters=3, trace_probes=2, slq_probes=2, slq_iters=2, repeats=1)


# ----------------------------------------------------------------------------- problem


class Net(nn.Module):
  """Conv tanh, Conv (stride 2) tanh, 2x2 average pool, Dense(10); widths (8, 12) have
  1,446 parameters."""
  widths: tuple[int, int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.tanh(nn.Conv(self.widths[0], (3, 3), padding="SAME")(x))
    x = jnp.tanh(nn.Conv(self.widths[1], (3, 3), strides=(2, 2), padding="SAME")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    # Flatten in PyTorch's (c, h, w) order, so the dense kernel copies as it is.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
    return nn.Dense(10)(x)


def make_loss_fn(model: nn.Module) -> Callable:
  """The mean softmax cross-entropy of `model` on one minibatch, as `dg` takes it."""

  def loss_fn(params, batch) -> jax.Array:
    logp = jax.nn.log_softmax(model.apply({"params": params}, batch["image"]))
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))

  return loss_fn


@dataclasses.dataclass
class Problem:
  """The loss, the weights, the one batch, and the same examples as K minibatches."""
  loss_fn: Callable
  params: dict
  batch: dict     # image [N, 8, 8, 1] float32 in [0, 1], label [N] int32
  batches: dict   # leaves [K, N / K, ...]


def make_problem(sizes: Sizes) -> Problem:
  if sizes.examples % sizes.minibatches:
    raise SystemExit(f"{sizes.examples} examples do not split into {sizes.minibatches}")
  data = sources.digits("train")[np.arange(sizes.examples)]
  batch = {"image": jnp.asarray(data["image"], jnp.float32) / 255.0,
           "label": jnp.asarray(data["label"], jnp.int32)}
  model = Net(sizes.widths)
  params = model.init(jax.random.key(0), batch["image"][:1])["params"]
  batches = jax.tree.map(lambda a: a.reshape((sizes.minibatches, -1) + a.shape[1:]), batch)
  return Problem(make_loss_fn(model), params, batch, batches)


def num_params(pb: Problem) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(pb.params))


# ----------------------------------------------------------------------------- exact values


@dataclasses.dataclass(frozen=True)
class Exact:
  """Dense float64 reference values of the same loss at the same weights."""
  eigenvalues: np.ndarray  # all of them, descending
  grad_norm: float
  noise_norm: float

  @property
  def sharpness(self) -> float:
    """The largest-magnitude eigenvalue, where power iteration converges."""
    return float(self.eigenvalues[np.argmax(np.abs(self.eigenvalues))])


def dense_hessian(loss_fn: Callable, params, batch, chunk: int = 256) -> np.ndarray:
  """The Hessian of `loss_fn` at `params` as a numpy matrix, `chunk` columns per call.

  tests/reference.py's one `jax.hessian` holds the activations of all columns at once
  (17 GB at the default size); blocks from a Python loop (a lax loop would run XLA:CPU's
  slow convolution gradients) need 4 GB and less time.
  """
  vec, unravel = ravel_pytree(params)
  grad = jax.grad(lambda v: loss_fn(unravel(v), batch))
  columns = jax.jit(jax.vmap(lambda t: jax.jvp(grad, (vec,), (t,))[1]))
  n = vec.size
  basis = np.eye(-(-n // chunk) * chunk, n, dtype=vec.dtype)  # zero rows pad the last block
  return np.concatenate([np.asarray(columns(basis[i:i + chunk]))
                         for i in range(0, n, chunk)])[:n]


def exact_values(pb: Problem) -> Exact:
  """The float64 Hessian's eigenvalues (`numpy.linalg.eigh`) and gradient statistics."""
  with jax.enable_x64():
    as64 = lambda tree: jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a), jnp.float64)
        if jnp.issubdtype(a.dtype, jnp.floating) else jnp.asarray(a), tree)
    params, batch, batches = as64(pb.params), as64(pb.batch), as64(pb.batches)
    eigenvalues = np.linalg.eigvalsh(dense_hessian(pb.loss_fn, params, batch))[::-1]
    grad = jax.jit(lambda b: ravel_pytree(jax.grad(pb.loss_fn)(params, b))[0])
    k = jax.tree.leaves(batches)[0].shape[0]
    grads = np.stack([np.asarray(grad(jax.tree.map(lambda a: a[i], batches)))
                      for i in range(k)])
  grad_norm, noise_norm = _grad_norm_and_noise(grads)
  return Exact(eigenvalues, grad_norm, noise_norm)


def _grad_norm_and_noise(grads: np.ndarray) -> tuple[float, float]:
  """||mean gradient|| and sqrt(mean_k ||g_k - mean||^2) of K flat gradients [K, dim]."""
  mean = grads.mean(axis=0)
  return float(np.linalg.norm(mean)), float(np.sqrt(((grads - mean) ** 2).sum(1).mean()))


# ----------------------------------------------------------------------------- invmeasure


def invmeasure_calls(pb: Problem, s: Sizes) -> dict[str, Callable[[], dict]]:
  """Each row's plain library call, as the README shows it, and its numbers."""
  key, loss_fn, params, batch = jax.random.key(0), pb.loss_fn, pb.params, pb.batch
  dim = num_params(pb)

  def top():
    r = dg.top_hessian_eigenvalues(loss_fn, params, batch, key=key, k=s.top_k,
                                   num_iters=s.lanczos_iters)
    return {"eigenvalues": np.asarray(r.eigenvalues), "hvps": s.lanczos_iters}

  def sharpness():
    r = dg.sharpness(loss_fn, params, batch, key=key, num_iters=s.power_iters, tol=s.tol)
    return {"eigenvalues": np.asarray([r.eigenvalue]), "hvps": int(r.num_iters)}

  def trace():
    r = dg.hessian_trace(loss_fn, params, batch, key=key, num_samples=s.trace_probes)
    return {"moments": [(float(r.estimate), float(r.stderr))], "hvps": s.trace_probes}

  def density():
    d = dg.spectral_density(loss_fn, params, batch, key=key, num_probes=s.slq_probes,
                            num_iters=s.slq_iters)
    moments = [dg.slq_trace(d, dim), dg.slq_trace(d, dim, jnp.square)]
    return {"moments": [(float(m.estimate), float(m.stderr)) for m in moments],
            "hvps": s.slq_probes * s.slq_iters}

  def stats():
    r = dg.gradient_stats(loss_fn, params, pb.batches)
    return {"grad_norm": float(r.grad_norm), "noise_norm": float(r.noise_norm),
            "hvps": f"{s.minibatches} gradients"}

  return {"top": top, "sharpness": sharpness, "trace": trace, "density": density,
          "stats": stats}


# ----------------------------------------------------------------------------- PyTorch side


def torch_net(widths: tuple[int, int]) -> "torch.nn.Module":
  """`Net` in PyTorch (NCHW), for 8x8 images."""
  tnn = torch.nn
  return tnn.Sequential(
      tnn.Conv2d(1, widths[0], 3, padding=1), tnn.Tanh(),
      # Flax's SAME for a stride-2 3x3 kernel on an even side pads 0 before, 1 after.
      tnn.ZeroPad2d((0, 1, 0, 1)), tnn.Conv2d(widths[0], widths[1], 3, stride=2), tnn.Tanh(),
      tnn.AvgPool2d(2), tnn.Flatten(), tnn.Linear(2 * 2 * widths[1], 10))


def torch_values(params: dict) -> list[np.ndarray]:
  """`Net`'s weights in `torch_net().parameters()` order and layout."""
  conv0, conv1, dense = params["Conv_0"], params["Conv_1"], params["Dense_0"]
  return [common.torch_conv_weight(conv0["kernel"]), conv0["bias"],
          common.torch_conv_weight(conv1["kernel"]), conv1["bias"],
          np.asarray(dense["kernel"]).T, dense["bias"]]


class TorchProblem:
  """The same network, weights, batch and minibatches in PyTorch."""

  def __init__(self, pb: Problem, widths: tuple[int, int]):
    self.model = torch_net(widths)
    common.copy_to_torch(self.model.parameters(), torch_values(pb.params))
    self.params = list(self.model.parameters())
    to_nchw = lambda a: torch.from_numpy(np.array(np.asarray(a).transpose(0, 3, 1, 2)))
    self.x = to_nchw(pb.batch["image"])
    self.y = torch.from_numpy(np.asarray(pb.batch["label"], np.int64))
    k = jax.tree.leaves(pb.batches)[0].shape[0]
    self.minibatches = list(zip(self.x.chunk(k), self.y.chunk(k)))

  def loss(self) -> float:
    with torch.no_grad():
      return float(F.cross_entropy(self.model(self.x), self.y))

  def gradient_stats(self) -> dict:
    """The plain loop: one `torch.autograd.grad` per minibatch, then the statistics."""
    grads = torch.stack([
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            F.cross_entropy(self.model(x), y), self.params)])
        for x, y in self.minibatches])
    mean = grads.mean(0)
    return {"grad_norm": float(mean.norm()),
            "noise_norm": float(((grads - mean) ** 2).sum(1).mean().sqrt()),
            "hvps": f"{len(self.minibatches)} gradients"}


def _eig_by_eigh(matrix: "torch.Tensor", eigenvectors: bool = False):
  """What the removed `torch.eig` returned, for a symmetric matrix: eigenvalues in the
  first column of an [n, 2] (real, imaginary) tensor, and eigenvectors as columns."""
  values, vectors = torch.linalg.eigh(matrix)
  return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def pyhessian_calls(tp: TorchProblem, s: Sizes) -> dict[str, Callable[[], dict]]:
  """PyHessian's functions on the one batch; gradient statistics by the plain loop."""

  def hessian():
    # Its constructor runs loss.backward(create_graph=True), which adds to .grad.
    tp.model.zero_grad(set_to_none=True)
    return pyhessian.hessian(tp.model, F.cross_entropy, data=(tp.x, tp.y), cuda=False)

  def top():
    values, _ = hessian().eigenvalues(maxIter=s.peer_max_iters, tol=s.tol, top_n=s.top_k)
    return {"eigenvalues": np.sort(values)[::-1]}

  def sharpness():
    values, _ = hessian().eigenvalues(maxIter=s.power_iters, tol=s.tol, top_n=1)
    return {"eigenvalues": np.asarray(values)}

  def trace():
    # It stops once |mean - previous mean| / (previous mean + 1e-6) < tol: with tol=0 a
    # negative running mean would stop it at the second probe; -inf never stops it.
    samples = hessian().trace(maxIter=s.trace_probes, tol=-math.inf)
    return {"moments": [_mean_and_stderr(np.asarray(samples))]}

  def density():
    with mock.patch.object(torch, "eig", _eig_by_eigh, create=True):
      nodes, weights = hessian().density(iter=s.slq_iters, n_v=s.slq_probes)
    return {"moments": slq_moments(nodes, weights, sum(p.numel() for p in tp.params))}

  return {"top": top, "sharpness": sharpness, "trace": trace, "density": density,
          "stats": tp.gradient_stats}


@contextlib.contextmanager
def count_pyhessian_hvps():
  """Counts PyHessian's Hessian-vector products (single-batch mode) while active."""
  module = importlib.import_module("pyhessian.hessian")  # `pyhessian.hessian` is the class
  original, count = module.hessian_vector_product, [0]

  def counting(*args, **kwargs):
    count[0] += 1
    return original(*args, **kwargs)

  with mock.patch.object(module, "hessian_vector_product", counting):
    yield count


def eigenthings_calls(tp: TorchProblem, s: Sizes) -> dict[str, Callable[[], dict]]:
  """hessian-eigenthings' algorithms on its Hessian over a loader of the one batch."""
  op = het.HessianOperator(tp.model, [(tp.x, tp.y)], het.supervised_loss(F.cross_entropy),
                           full_dataset=True)

  def top():
    # 'LA' (largest algebraic) is what invmeasure returns; its default 'LM' is magnitude.
    r = het.lanczos(op, k=s.top_k, max_iter=s.lanczos_iters, which="LA", seed=0)
    return {"eigenvalues": r.eigenvalues.numpy()}

  def sharpness():
    value, *_ = het.power_iteration_one(op, max_iter=s.power_iters, tol=s.tol, seed=0)
    return {"eigenvalues": np.asarray([value])}

  def trace():
    r = het.hutchinson(op, num_samples=s.trace_probes, seed=0)
    return {"moments": [(r.estimate, r.stderr)]}

  def density():
    r = het.spectral_density(op, num_runs=s.slq_probes, lanczos_steps=s.slq_iters, seed=0)
    return {"moments": slq_moments(r.raw_eigenvalues.numpy(), r.raw_weights.numpy(), op.size)}

  return {"top": top, "sharpness": sharpness, "trace": trace, "density": density}


@contextlib.contextmanager
def count_eigenthings_hvps():
  """Counts hessian-eigenthings' Hessian-vector products while active."""
  original, count = het.HessianOperator.matvec, [0]

  def counting(self, v):
    count[0] += 1
    return original(self, v)

  with mock.patch.object(het.HessianOperator, "matvec", counting):
    yield count


# ----------------------------------------------------------------------------- agreement


def _mean_and_stderr(samples: np.ndarray) -> tuple[float, float]:
  stderr = samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else math.nan
  return float(samples.mean()), float(stderr)


def slq_moments(nodes, weights, dim: int) -> list[tuple[float, float]]:
  """SLQ estimates (mean, stderr over probes) of tr(H) and tr(H^2) from per-probe
  quadrature nodes and weights (rows), as `dg.slq_trace` makes them."""
  nodes = np.nan_to_num(np.asarray(nodes, np.float64))  # eigenthings pads runs with NaN
  weights = np.asarray(weights, np.float64)
  return [_mean_and_stderr(dim * np.sum(weights * nodes ** power, axis=1)) for power in (1, 2)]


def _relative(got, want) -> float:
  return float(np.max(np.abs(np.asarray(got, np.float64) - want) / np.abs(want)))


def _in_stderrs(moment: tuple[float, float], exact: float) -> str:
  mean, stderr = moment
  return f"{(mean - exact) / stderr:+.1f} se"


def error_cell(row: str, out: dict | None, exact: Exact, k: int) -> str:
  """How far one library's result is from the dense float64 value."""
  if out is None:
    return "n/a"
  ev = exact.eigenvalues
  if row == "top":
    return f"{_relative(out['eigenvalues'][:k], ev[:k]):.1e}"
  if row == "sharpness":
    return f"{_relative(out['eigenvalues'][0], exact.sharpness):.1e}"
  if row == "trace":
    return _in_stderrs(out["moments"][0], ev.sum())
  if row == "density":
    tr, tr_sq = out["moments"]
    return f"tr {_in_stderrs(tr, ev.sum())}, tr H² {_in_stderrs(tr_sq, (ev ** 2).sum())}"
  return (f"norm {_relative(out['grad_norm'], exact.grad_norm):.1e}, "
          f"noise {_relative(out['noise_norm'], exact.noise_norm):.1e}")


# ----------------------------------------------------------------------------- report


def labels(s: Sizes) -> dict[str, tuple[str, str]]:
  """Each row's name and notes."""
  return {
      "top": (f"top-{s.top_k} eigenvalues",
              f"invmeasure and eigenthings: Lanczos, {s.lanczos_iters} steps; PyHessian: "
              f"deflated power iteration, <= {s.peer_max_iters} HVPs per eigenvalue, tol "
              f"{s.tol:g}"),
      "sharpness": (f"sharpness, power iteration <= {s.power_iters}",
                    f"each stops on a relative change < {s.tol:g}; eigenthings also needs "
                    "residual/|eigenvalue| < tol"),
      "trace": (f"Hutchinson trace, {s.trace_probes} probes",
                "error in standard errors; PyHessian's tol=-inf runs every probe"),
      "density": (f"SLQ density, {s.slq_probes} probes x {s.slq_iters} iterations",
                  "error: SLQ tr H and tr H² in standard errors; PyHessian with "
                  "torch.linalg.eigh for its removed torch.eig"),
      "stats": (f"gradient stats, K={s.minibatches}",
                "neither peer has them: the PyHessian column is a plain PyTorch loop of "
                "torch.autograd.grad per minibatch"),
  }


def first_calls(calls: dict[str, dict[str, Callable[[], dict]]], counters: dict
                ) -> tuple[dict[str, dict[str, dict]], dict[str, float]]:
  """Every call once (compiles invmeasure; warms the peers up): results, HVPs counted,
  and invmeasure's seconds."""
  results, seconds = {side: {} for side in calls}, {}
  for side, side_calls in calls.items():
    for row, call in side_calls.items():
      with counters.get(side, contextlib.nullcontext)() as count:
        out, secs = common.timed(call)
      if count is not None and "hvps" not in out:
        out["hvps"] = count[0]
      results[side][row] = out
      if side == "invmeasure":
        seconds[row] = secs
  return results, seconds


def geometric_mean(values: Sequence[float]) -> float:
  return math.exp(sum(math.log(v) for v in values) / len(values))


def report(s: Sizes, times: dict[str, float], results: dict, first_s: dict[str, float],
           exact: Exact) -> tuple[list[tuple], str]:
  """The table's rows and the summary line of invmeasure/PyHessian."""
  rows, ratios = [], {}
  nan = float("nan")
  for row, (label, note) in labels(s).items():
    t = {side: times.get(f"{side}.{row}", nan) for side in SIDES}
    outs = {side: results.get(side, {}).get(row) for side in SIDES}
    hvps = " / ".join(str(o["hvps"]) if o else "n/a" for o in outs.values())
    if row != "stats" and not math.isnan(t["pyhessian"]):
      ratios[label] = t["invmeasure"] / t["pyhessian"]
    rows.append((label, common.ms(t["invmeasure"]), f"{first_s[row]:.1f}",
                 common.ms(t["pyhessian"]), common.ms(t["eigenthings"]),
                 common.ratio(t["invmeasure"], t["pyhessian"]),
                 common.ratio(t["invmeasure"], t["eigenthings"]), hvps,
                 *(error_cell(row, outs[side], exact, s.top_k) for side in SIDES), note))
  if not ratios:
    return rows, "invmeasure/PyHessian: n/a (PyHessian not installed)"
  worst = max(ratios, key=ratios.get)
  summary = (f"invmeasure/PyHessian over the {len(ratios)} PyHessian rows: geometric mean "
             f"{geometric_mean(list(ratios.values())):.2f}x, worst {ratios[worst]:.2f}x "
             f"({worst})")
  return rows, summary


def describe(s: Sizes, pb: Problem, threads: int, peers: Sequence[str]) -> str:
  versions = [f"{name} {importlib.metadata.version(dist)}" for name, dist in
              (("PyHessian", "pyhessian"), ("hessian-eigenthings", "hessian-eigenthings"))
              if name in peers]
  setup = (f"torch threads {threads}, XLA threads: its default (all "
           f"{os.cpu_count()} cores)" if torch is not None else "no PyTorch")
  problem = (f"CNN widths {s.widths}, {num_params(pb)} params, {s.examples} digits as one "
             f"batch, K={s.minibatches}; median of {s.repeats} interleaved runs after a first "
             "call")
  return common.machine_line("; ".join([setup, *versions, problem]))


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="a tiny CNN, 16 examples, K=2, a few iterations, one repetition")
  parser.add_argument("--repeats", type=int, default=None, help="timed repetitions")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch.set_num_threads (default: the number of cores; 1 with "
                           "--quick, as a busy machine's oversubscribed OpenMP threads can "
                           "slow PyTorch down a hundredfold)")
  args = parser.parse_args(argv)
  args.threads = args.threads or (1 if args.quick else os.cpu_count())
  return args


def peer_calls(pb: Problem, sizes: Sizes, threads: int
               ) -> tuple[TorchProblem | None, dict[str, dict], dict[str, Callable]]:
  """The PyTorch problem, each installed peer's calls, and their HVP counters."""
  if torch is None:
    return None, {}, {}
  torch.set_num_threads(threads)
  torch.manual_seed(0)  # PyHessian draws its probes from the global generator
  # PyHessian's backward(create_graph=True) warns of a parameter-gradient cycle.
  warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
  tp = TorchProblem(pb, sizes.widths)
  calls, counters = {"pyhessian": {"stats": tp.gradient_stats}}, {}
  if pyhessian is not None:
    calls["pyhessian"], counters["pyhessian"] = pyhessian_calls(tp, sizes), count_pyhessian_hvps
  if het is not None:
    calls["eigenthings"] = eigenthings_calls(tp, sizes)
    counters["eigenthings"] = count_eigenthings_hvps
  return tp, calls, counters


def main(argv: Sequence[str] | None = None) -> None:
  args = parse(argv)
  sizes = QUICK if args.quick else Sizes()
  sizes = dataclasses.replace(sizes, repeats=args.repeats or sizes.repeats)
  pb = make_problem(sizes)
  tp, calls, counters = peer_calls(pb, sizes, args.threads)
  calls = {"invmeasure": invmeasure_calls(pb, sizes), **calls}
  peers = [name for name, mod in (("PyHessian", pyhessian), ("hessian-eigenthings", het))
           if mod is not None and tp is not None]
  print(describe(sizes, pb, args.threads, peers))
  if tp is not None:
    common.check_same_loss(float(pb.loss_fn(pb.params, pb.batch)), tp.loss(), LOSS_ATOL)
  exact = exact_values(pb)
  results, first_s = first_calls(calls, counters)
  fns = {f"{side}.{row}": call for side, side_calls in calls.items()
         for row, call in side_calls.items()}
  times = common.interleaved_ms(fns, sizes.repeats, warmup=0)
  rows, summary = report(sizes, times, results, first_s, exact)
  print()
  print(common.table(HEADER, rows, "lrrrrrrrrrrl"))
  print()
  print(summary)
  print(common.end_line())


if __name__ == "__main__":
  main()
