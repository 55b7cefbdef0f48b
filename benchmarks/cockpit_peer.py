"""invmeasure's per-example instruments against Cockpit's (PyTorch, BackPACK) on one CNN.

The quickstart's network (two 3x3 conv + ReLU + 2x2 average-pool blocks, a dense head)
in Flax and in PyTorch with the same weights, fed the same batches of digits, trained by
plain SGD (CABS and early stopping are defined for it alone). Four tables:
1. Agreement: every quantity, Cockpit's value and invmeasure's on the same weights and
   batches (alpha spans steps 0 and 1), and their relative difference.
2. Overhead, each library against its own plain step (a jitted step; PyTorch's forward,
   backward and SGD step), every quantity alone and Cockpit's economy and business sets,
   timed side by side (interleaved repeats, medians).
3. The same sets in invmeasure's driver step (`config.diagnostics.per_step`) on the
   quickstart CNN and CIFAR ResNet-18, BatchNorm frozen at the batch's statistics (Cockpit's
   BackPACK has no per-example gradients through BatchNorm in training mode).
4. Peak temporary memory of `per_example_stats` as the batch grows, whole batch against
   chunks of 16 (XLA's compiled memory analysis).

Sets: Cockpit's economy (Alpha, Distance, GradHist1d, GradNorm, InnerTest, Loss, NormTest,
OrthoTest, UpdateSize) is matched by invmeasure's alpha, layer_norms (gradient, update,
parameter and distance norms per leaf), inner_test, norm_test and ortho_test (the loss
is free; invmeasure has no gradient histogram); business adds Cockpit's TICDiag and
HessTrace (BackPACK's exact Hessian diagonal), invmeasure's tic (trace form) with its
Hutchinson tr(H) (one Rademacher probe a step).

    python -m benchmarks.cockpit_peer            # batch 32, the quickstart CNN; ResNet-18
    python -m benchmarks.cockpit_peer --quick    # a 4-channel CNN, batch 8, CI
"""

from __future__ import annotations

import argparse
import importlib.metadata
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from benchmarks import common  # noqa: E402  (after the path set-up for file runs)
from invmeasure import diagnostics as dg  # noqa: E402
from invmeasure.data import sources  # noqa: E402
from invmeasure.models import small  # noqa: E402

try:
  import torch
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # cockpit imports pkg_resources
    import backpack
    import cockpit
    from cockpit.utils.configuration import configuration
except ImportError:  # the cockpit extra is not installed: invmeasure's columns only
  torch = backpack = cockpit = configuration = None

LR = 0.1

# invmeasure's per-step names for each Cockpit quantity (None: no counterpart).
COUNTERPARTS = {"NormTest": "norm_test", "InnerTest": "inner_test", "OrthoTest": "ortho_test",
                "MeanGSNR": "gsnr", "CABS": "cabs", "EarlyStopping": "early_stopping",
                "TICTrace": "tic", "Alpha": "alpha", "GradNorm": "layer_norms",
                "Distance": "layer_norms", "UpdateSize": "layer_norms", "HessTrace": "tic",
                "TICDiag": None, "GradHist1d": None, "Loss": None}
SETS = {"economy": "alpha,layer_norms,inner_test,norm_test,ortho_test",
        "business": "alpha,layer_norms,inner_test,norm_test,ortho_test,tic"}


def make_problem(quick: bool):
  widths = (4, 8) if quick else (32, 64)
  batch_size = 8 if quick else 32
  model = small.SmallCNN(widths=widths, num_classes=10)
  data = sources.digits("train")[np.arange(4 * batch_size)]
  images = (np.asarray(data["image"], np.float32) / 255.0 - 0.5) / 0.3
  batches = [{"image": jnp.asarray(images[k * batch_size:(k + 1) * batch_size]),
              "label": jnp.asarray(np.asarray(data["label"][k * batch_size:(k + 1) * batch_size],
                                              np.int32))} for k in range(4)]
  params = model.init(jax.random.key(0), batches[0]["image"][:1])["params"]

  def loss_fn(p, batch):
    logits = model.apply({"params": p}, batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  return model, widths, params, batches, loss_fn


# --- PyTorch -------------------------------------------------------------------------

def torch_net(widths, image_size: int = 8):
  tnn = torch.nn
  layers, channels, size = [], 1, image_size
  for width in widths:
    layers += [tnn.Conv2d(channels, width, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2)]
    channels, size = width, size // 2
  return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(channels * size * size, 10))


def flax_leaf_order(params, widths):
  """Flax leaf paths in PyTorch's parameter order (weight, bias per layer)."""
  names = [f"Conv_{i}" for i in range(len(widths))] + ["Dense_0"]
  return [(n, k) for n in names for k in ("kernel", "bias")]


def torch_values(params, widths, image_size: int = 8) -> list[np.ndarray]:
  out = []
  for name, key in flax_leaf_order(params, widths):
    value = np.asarray(params[name][key])
    if name.startswith("Conv") and key == "kernel":
      value = common.torch_conv_weight(value)
    elif key == "kernel":  # Flax flattens HWC, PyTorch CHW: reorder the dense rows
      size = image_size // 2 ** len(widths)
      channels = widths[-1]
      value = value.reshape(size, size, channels, -1).transpose(2, 0, 1, 3).reshape(
          channels * size * size, -1).T
    out.append(value)
  return out


class TorchRun:
  """The network in PyTorch, trained by SGD, with or without a Cockpit."""

  def __init__(self, params, widths, batches, quantities=None):
    self.model = backpack.extend(torch_net(widths))
    common.copy_to_torch(self.model.parameters(), torch_values(params, widths))
    self.loss = backpack.extend(torch.nn.CrossEntropyLoss())
    self.each = torch.nn.CrossEntropyLoss(reduction="none")
    self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
    self.batches = [(torch.from_numpy(np.array(np.asarray(b["image"]).transpose(0, 3, 1, 2))),
                     torch.from_numpy(np.asarray(b["label"], np.int64))) for b in batches]
    self.cockpit = (cockpit.Cockpit(self.model.parameters(), quantities=quantities)
                    if quantities else None)
    self.step_count = 0

  def step(self, k: int | None = None):
    k = self.step_count % len(self.batches) if k is None else k
    x, y = self.batches[k]
    self.opt.zero_grad()
    out = self.model(x)
    loss = self.loss(out, y)
    if self.cockpit is None:
      loss.backward()
    else:
      info = {"batch_size": x.shape[0], "individual_losses": self.each(out, y), "loss": loss,
              "optimizer": self.opt}
      with self.cockpit(self.step_count, info=info):
        loss.backward(create_graph=self.cockpit.create_graph(self.step_count))
    self.opt.step()
    self.step_count += 1
    return loss


def cockpit_quantities(names, every=1):
  schedule = cockpit.utils.schedules.linear(every)
  return [getattr(cockpit.quantities, n)(track_schedule=schedule) for n in names]


# --- invmeasure ----------------------------------------------------------------------

def invmeasure_values(loss_fn, params, batches, exact_trace: float | None):
  """Every quantity of steps 0 and 1 of SGD from `params` on batches 0 and 1."""
  grad0 = jax.grad(loss_fn)(params, batches[0])
  update0 = jax.tree.map(lambda g: -LR * g, grad0)
  params1 = optax.apply_updates(params, update0)

  @jax.jit
  def measure(params, params1, update0, first, second):
    s0 = dg.per_example_stats(loss_fn, params, first, directions=[update0])
    s1 = dg.per_example_stats(loss_fn, params1, second, directions=[update0])
    return s0, s1

  s0, s1 = measure(params, params1, update0, batches[0], batches[1])
  # On concrete arrays: the library drives compiled chunks of probes (fast on CPU).
  trace = dg.hessian_trace(loss_fn, params, batches[0], key=jax.random.key(0), num_samples=64)
  t = dg.tree_norm(update0)
  alpha = dg.normalized_step_length(dg.step_length_point(s0, 0, t),
                                    dg.step_length_point(s1, 0, t), t)
  out = {"NormTest": dg.norm_test(s0), "InnerTest": dg.inner_test(s0),
         "OrthoTest": dg.ortho_test(s0), "MeanGSNR": dg.mean_gsnr(s0),
         "CABS": dg.cabs_batch_size(s0, LR), "EarlyStopping": dg.early_stopping(s0),
         "Alpha": alpha, "Loss": jnp.mean(s0.losses),
         "HessTrace (Hutchinson, 64 probes)": trace.estimate,
         "noise_scale (no Cockpit counterpart)": dg.noise_scale(s0).simple}
  if exact_trace is not None:
    out["TICTrace"] = dg.tic(s0, exact_trace)  # the definition, on Cockpit's exact tr(H)
    out["TICTrace (Hutchinson, 64 probes)"] = dg.tic(s0, trace.estimate)
  norms = dg.layer_norms(grad=grad0, distance=jax.tree.map(jnp.zeros_like, params),
                         update=update0)
  return {k: float(v) for k, v in out.items()}, norms, float(trace.stderr)


def agreement(params, widths, batches, loss_fn) -> tuple[str, dict]:
  names = ["NormTest", "InnerTest", "OrthoTest", "MeanGSNR", "CABS", "EarlyStopping",
           "TICTrace", "Alpha", "HessTrace", "GradNorm", "UpdateSize", "Distance", "Loss"]
  run = TorchRun(params, widths, batches, cockpit_quantities(names))
  for k in range(2):
    run.step(k)
  output = run.cockpit.get_output()
  theirs = {name: output[0][name] for name in names if name in output.get(0, {})}
  exact_trace = float(np.sum(theirs["HessTrace"]))
  ours, norms, trace_stderr = invmeasure_values(loss_fn, params, batches, exact_trace)
  rows, worst = [], {}
  for name, mine in ours.items():
    base = name.split(" ")[0]
    theirs_value = theirs.get(base)
    if base == "HessTrace":
      theirs_value = exact_trace
      note = (f"Hutchinson vs BackPACK's exact diagonal: "
              f"{abs(mine - exact_trace) / trace_stderr:.1f} standard errors")
    elif "(" in name:
      note = "stochastic tr(H)" if base == "TICTrace" else "Cockpit has none"
    elif base == "TICTrace":
      note = "tic(stats, Cockpit's exact tr(H)): the definition"
    else:
      note = ""
    rel = (abs(mine - theirs_value) / max(abs(theirs_value), 1e-30)
           if theirs_value is not None else float("nan"))
    if not note or note.startswith("tic("):
      worst[base] = rel
    rows.append((name, f"{theirs_value:.6g}" if theirs_value is not None else "n/a",
                 f"{mine:.6g}", f"{rel:.1e}" if rel == rel else "n/a", note))
  order = flax_leaf_order(params, widths)
  for quantity, kind in (("GradNorm", "grad"), ("UpdateSize", "update"),
                         ("Distance", "distance")):
    if quantity not in theirs:
      continue
    got = np.array([float(norms[f"{kind}/{n}/{k}"]) for n, k in order])
    want = np.asarray(theirs[quantity], np.float64)
    rel = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))
    worst[quantity] = rel if np.max(np.abs(want)) > 0 else float(np.max(np.abs(got - want)))
    rows.append((f"{quantity} (per layer, {len(order)})", f"max {want.max():.6g}",
                 f"max {got.max():.6g}", f"{worst[quantity]:.1e}", "layer_norms"))
  header = ("quantity", "Cockpit", "invmeasure", "relative difference", "notes")
  return common.table(header, rows, "lllrl"), worst


def invmeasure_stepper(loss_fn, params, batches, per_step: str):
  """A jitted SGD step measuring `per_step` (the driver's step function on these params)."""
  from invmeasure.training import state as state_lib, step as step_lib

  names = tuple(n for n in per_step.split(",") if n)
  tx = optax.sgd(LR)
  params = jax.tree.map(jnp.copy, params)  # the step donates its state: a copy of its own
  state = state_lib.RunState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                             opt_state=tx.init(params),
                             init_params=jax.tree.map(jnp.copy, params),
                             sharpness_vector=(), sums=state_lib.zero_sums(names, params))

  def train_step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    per_example = None
    if step_lib.needs_per_example(names):
      per_example = step_lib.PerExample(loss_fn, batch, grads, jnp.asarray(LR),
                                        jax.random.fold_in(jax.random.key(0), state.step))
    return step_lib.apply_gradients(tx, state, loss, grads, per_step=names,
                                    per_example=per_example)

  step = jax.jit(train_step, donate_argnums=0)
  holder = [state]
  count = [0]

  def run():
    batch = batches[count[0] % len(batches)]
    count[0] += 1
    holder[0], metrics = step(holder[0], batch)
    return metrics
  return run


def overhead(params, widths, batches, loss_fn, repeats: int, quick: bool):
  """(table, {set: (invmeasure ratio, Cockpit ratio)})."""
  quantities = ["NormTest", "InnerTest", "OrthoTest", "MeanGSNR", "CABS", "EarlyStopping",
                "TICTrace", "Alpha", "GradNorm", "Distance", "UpdateSize", "HessTrace"]
  if quick:  # each variant compiles once: keep CI short
    quantities = ["NormTest", "Alpha"]
  ours = {"plain": ""}
  ours.update({q: COUNTERPARTS[q] for q in quantities})
  ours.update({"noise_scale": "noise_scale"})
  ours.update(SETS)
  fns = {f"invmeasure {name}": invmeasure_stepper(loss_fn, params, batches, names)
         for name, names in ours.items()}
  if torch is not None:
    torch.set_num_threads(2)
    runs = {"plain": TorchRun(params, widths, batches)}
    runs.update({q: TorchRun(params, widths, batches, cockpit_quantities([q]))
                 for q in quantities})
    runs.update({s: TorchRun(params, widths, batches, configuration(s)) for s in SETS})
    fns.update({f"Cockpit {name}": run.step for name, run in runs.items()})
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Cockpit warns on zero variances of tiny batches
    times = common.interleaved_ms(fns, repeats, warmup=3)
  rows, sets = [], {}
  for name in [*quantities, "noise_scale", *SETS]:
    mine = times[f"invmeasure {name}"] / times["invmeasure plain"]
    theirs = (times[f"Cockpit {name}"] / times["Cockpit plain"]
              if f"Cockpit {name}" in times else float("nan"))
    if name in SETS:
      sets[name] = (mine, theirs)
    label = name if name in SETS else f"{name} ({ours[name]})"
    rows.append((label, common.ms(times[f"invmeasure {name}"]), f"{mine:.2f}x",
                 common.ms(times.get(f"Cockpit {name}", float("nan"))),
                 f"{theirs:.2f}x" if theirs == theirs else "n/a"))
  rows.insert(0, ("plain step", common.ms(times["invmeasure plain"]), "1.00x",
                  common.ms(times.get("Cockpit plain", float("nan"))),
                  "1.00x" if torch is not None else "n/a"))
  header = ("tracked every step (invmeasure name)", "invmeasure ms", "vs its plain step",
            "Cockpit ms", "vs its plain step")
  return common.table(header, rows), sets


def driver_overhead(quick: bool, repeats: int, configs: tuple[str, ...]) -> str:
  """invmeasure's sets in the driver's own step: the quickstart CNN and ResNet-18."""
  from benchmarks import per_step

  rows = []
  for name in ("quickstart",) if quick else configs:
    variants = {"plain": "", **SETS}
    fns = {}
    for label, names in variants.items():
      config = per_step._config(name, quick, names)
      config.optimizer.momentum = 0.9
      fns[label] = per_step._stepper(config, 1)
    times = common.interleaved_ms(fns, repeats, warmup=2)
    batch = 16 if name == "cifar10_resnet18" else per_step._config(name, quick, "").batch_size
    for label in variants:
      rows.append((name, batch, label, common.ms(times[label]),
                   f"{times[label] / times['plain']:.2f}x"))
  return common.table(("config", "batch", "tracked every step", "ms per step",
                       "vs plain step"), rows)


def memory(loss_fn, params, quick: bool) -> str:
  """Compiled peak temporaries of per_example_stats, whole batch against chunks."""
  rows = []
  sizes = (16, 32) if quick else (32, 64, 128, 256, 512)
  chunk = 8 if quick else 16
  for size in sizes:
    batch = {"image": jax.ShapeDtypeStruct((size, 8, 8, 1), jnp.float32),
             "label": jax.ShapeDtypeStruct((size,), jnp.int32)}
    out = [size]
    for chunk_size, unroll in ((None, None), (chunk, True), (chunk, False)):
      fn = jax.jit(lambda p, b, c=chunk_size, u=unroll: dg.per_example_stats(
          loss_fn, p, b, chunk_size=c, unroll=u))
      analysis = fn.lower(params, batch).compile().memory_analysis()
      out.append(f"{analysis.temp_size_in_bytes / 2 ** 20:.2f}")
    rows.append(out)
  return common.table(("batch", "MiB: whole batch at once", f"MiB: chunks of {chunk}, unrolled",
                       f"MiB: chunks of {chunk}, lax.scan"), rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--driver_configs", default="quickstart,cifar10_resnet18",
                      help="configs of the driver-step table (comma-separated)")
  args = parser.parse_args()
  repeats = args.repeats or (3 if args.quick else 30)
  versions = ("cockpit-for-pytorch " + importlib.metadata.version("cockpit-for-pytorch")
              + ", backpack-for-pytorch " + importlib.metadata.version("backpack-for-pytorch")
              if cockpit is not None
              else "no Cockpit (pip install -e '.[cockpit]', in a venv of its own)")
  print(common.machine_line(versions))
  model, widths, params, batches, loss_fn = make_problem(args.quick)
  size = batches[0]["label"].shape[0]
  print(f"\nCNN widths {widths}, {dg.tree_size(params)} parameters, batch {size}, SGD lr {LR}")
  if cockpit is not None:
    table, worst = agreement(params, widths, batches, loss_fn)
    print("\nAgreement on the same weights and batches (float32):\n" + table)
    print("worst relative difference over the quantities defined alike: "
          f"{max(worst.values()):.1e} ({max(worst, key=worst.get)})")
    if max(worst.values()) > 1e-4:
      raise SystemExit("invmeasure and Cockpit disagree beyond 1e-4 (relative)")
  table, sets = overhead(params, widths, batches, loss_fn, repeats, args.quick)
  print("\nOverhead, every step, against each library's own plain step:\n" + table)
  print("\ninvmeasure's driver step (config.diagnostics.per_step), SGD with momentum:\n"
        + driver_overhead(args.quick, max(3, repeats // 3),
                          tuple(args.driver_configs.split(","))))
  print("\nPeak temporary memory of per_example_stats (XLA's compiled analysis):\n"
        + memory(loss_fn, params, args.quick))
  print(common.end_line())
  fmt = lambda x: f"{x:.2f}x" if x == x else "n/a"  # noqa: E731
  print(f"overhead every step: economy {fmt(sets['economy'][0])} business "
        f"{fmt(sets['business'][0])} (invmeasure); economy {fmt(sets['economy'][1])} "
        f"business {fmt(sets['business'][1])} (Cockpit)")


if __name__ == "__main__":
  main()
