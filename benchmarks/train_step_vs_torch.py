"""The driver's train step against the same step in PyTorch eager, and its FLOP rate.

For each model, the jitted, sharded, state-donating step that `invmeasure.training`
runs (`loop.jit_train_step` of the config's plan: on-device normalisation, forward,
backward, SGD with momentum 0.9 and weight decay 5e-4 added to the gradient) against
the paper's code path: the same network in PyTorch eager with `torch.optim.SGD` on the
same batch, weights copied from Flax (the losses are checked to agree). Both run in
this process on the same CPU threads, interleaved. Models:
- quickstart: configs/quickstart.py without its augmentation (small_cnn widths (32, 64) on 8x8 digits, batch 32);
- resnet18: configs/cifar10_resnet18.py (CIFAR ResNet-18) at a small batch, without
  augmentation in either framework (the JAX step with its on-device crop and flip is a
  row of its own).
The FLOP rate is XLA's cost analysis of the compiled step over its measured time,
next to a large matrix product measured in the same run.

    python -m benchmarks.train_step_vs_torch                  # both models
    python -m benchmarks.train_step_vs_torch --models quickstart
    python -m benchmarks.train_step_vs_torch --quick          # tiny sizes, CI
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (after the path set-up for file runs)
from invmeasure.training import loop  # noqa: E402

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # CI installs no PyTorch; the tables still print, with "n/a"
  torch = None

HEADER = ("model", "batch", "JAX step ms", "PyTorch step ms", "JAX/PyTorch",
          "JAX GFLOP/s", "JAX / matmul rate", "notes")
LOSS_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Case:
  """One model to time: its config (with overrides) and timing sizes."""
  name: str
  config: str          # module in configs/
  arg: str             # the config's argument
  overrides: dict      # dotted field -> value
  steps_per_call: int  # steps timed together (JAX dispatches them asynchronously)
  repeats: int


def cases(quick: bool, batch: int | None) -> dict[str, Case]:
  if quick:
    return {
        "quickstart": Case("quickstart", "quickstart", "", {"model.widths": (4, 8),
                                                            "batch_size": 8,
                                                            "augmentation": "none"}, 2, 1),
        "resnet18": Case("resnet18", "cifar10_resnet18", "",
                         {"model.width": 4, "batch_size": batch or 2,
                          "augmentation": "none"}, 1, 1),
    }
  return {
      "quickstart": Case("quickstart", "quickstart", "", {"augmentation": "none"}, 50, 15),
      "resnet18": Case("resnet18", "cifar10_resnet18", "",
                       {"batch_size": batch or 16, "augmentation": "none"}, 2, 7),
  }


def make_config(case: Case):
  import importlib
  config = importlib.import_module(f"configs.{case.config}").get_config(case.arg)
  for field, value in case.overrides.items():
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


# ----------------------------------------------------------------------------- JAX side


class JaxStep:
  """The driver's step on a fixed random batch, compiled ahead of the timing."""

  def __init__(self, config):
    self.plan = loop.make_plan(config, abstract=True)  # shapes only: no data set needed
    task = self.plan.task
    rng = np.random.default_rng(0)
    shape = (config.batch_size, *task.image_shape)
    self.images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    self.labels = rng.integers(0, config.num_classes, size=shape[:1]).astype(np.int32)
    self.batch = {k: jax.device_put(v, self.plan.batch_sharding)
                  for k, v in (("image", self.images), ("label", self.labels))}
    self.state = loop.init_state_fn(self.plan)(loop.init_key(config))
    jitted = loop.jit_train_step(self.plan)
    (self.step, self.compile_s) = common.timed(
        lambda: jitted.lower(self.state, self.batch).compile())
    cost = self.step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

  def variables(self) -> dict:
    return {"params": self.state.params, **self.state.model_state}

  def loss(self) -> float:
    """The training-mode loss of the batch at the current weights."""
    task = self.plan.task
    images = task.preprocess(jnp.asarray(self.images), None)
    # Jitted: op by op, a ResNet compiles each of its ~150 operations on its own.
    loss, _ = jax.jit(task.batch_loss)(self.state.params, self.state.model_state, images,
                                       jnp.asarray(self.labels), jax.random.key(0))
    return float(loss)

  def run(self, steps: int) -> Callable[[], object]:
    def call():
      for _ in range(steps):
        self.state, metrics = self.step(self.state, self.batch)
      return metrics
    return call


# ----------------------------------------------------------------------------- PyTorch side


def _dense_rows_chw(kernel: np.ndarray, side: int, channels: int) -> np.ndarray:
  """A Flax dense kernel after an (h, w, c) flatten, as a PyTorch weight after (c, h, w)."""
  k = kernel.reshape(side, side, channels, -1).transpose(2, 0, 1, 3)
  return k.reshape(-1, k.shape[-1]).T


def torch_small_cnn(config, params) -> "torch.nn.Module":
  """configs/quickstart.py's SmallCNN in PyTorch, with the Flax weights."""
  tnn = torch.nn
  widths, channels, layers, side = tuple(config.model.widths), 1, [], 8
  for width in widths:
    layers += [tnn.Conv2d(channels, width, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2)]
    channels, side = width, side // 2
  layers += [tnn.Flatten(), tnn.Linear(channels * side * side, config.num_classes)]
  model = tnn.Sequential(*layers)
  values = []
  for i in range(len(widths)):
    values += [common.torch_conv_weight(params[f"Conv_{i}"]["kernel"]), params[f"Conv_{i}"]["bias"]]
  values += [_dense_rows_chw(np.asarray(params["Dense_0"]["kernel"]), side, channels),
             params["Dense_0"]["bias"]]
  common.copy_to_torch(model.parameters(), values)
  return model


class _Block(torch.nn.Module if torch else object):
  """torchvision's BasicBlock, named as invmeasure.models.resnet names its layers."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    tnn = torch.nn
    self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(cout)
    self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                       tnn.BatchNorm2d(cout))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def torch_resnet18_cifar(config, variables) -> "torch.nn.Module":
  """configs/cifar10_resnet18.py's network in PyTorch (CIFAR stem), with the Flax weights."""
  tnn = torch.nn
  width = int(config.model.width)
  params = variables["params"]
  stem = [tnn.Conv2d(3, width, 3, 1, 1, bias=False), tnn.BatchNorm2d(width), tnn.ReLU()]
  values = [common.torch_conv_weight(params["conv1"]["kernel"]), *_bn(params["bn1"])]
  blocks, cin = [], width
  for stage in range(4):
    for index in range(2):
      cout, stride = width * 2 ** stage, 2 if stage > 0 and index == 0 else 1
      blocks.append(_Block(cin, cout, stride))
      p = params[f"layer{stage + 1}_{index}"]
      values += [common.torch_conv_weight(p["conv1"]["kernel"]), *_bn(p["bn1"]),
                 common.torch_conv_weight(p["conv2"]["kernel"]), *_bn(p["bn2"])]
      if "downsample_conv" in p:
        values += [common.torch_conv_weight(p["downsample_conv"]["kernel"]),
                   *_bn(p["downsample_bn"])]
      cin = cout
  head = tnn.Linear(cin, config.num_classes)
  values += [np.asarray(params["fc"]["kernel"]).T, params["fc"]["bias"]]
  model = tnn.Sequential(*stem, *blocks, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), head)
  common.copy_to_torch(model.parameters(), values)
  return model


def _bn(p) -> list:
  return [p["scale"], p["bias"]]


class TorchStep:
  """The eager step: normalise, forward, cross-entropy, backward, SGD(momentum, L2)."""

  def __init__(self, case: Case, config, jax_step: JaxStep):
    from invmeasure.data import augment
    params = jax_step.state.params
    if case.config == "quickstart":
      self.model = torch_small_cnn(config, jax.tree.map(np.asarray, params))
    else:
      self.model = torch_resnet18_cifar(config, jax.tree.map(np.asarray, jax_step.variables()))
    self.model.train()
    mean, std = augment._STATS[config.dataset]  # the same normalisation as the JAX step
    self.mean = torch.tensor(mean).view(1, -1, 1, 1)
    self.std = torch.tensor(std).view(1, -1, 1, 1)
    self.images = torch.from_numpy(np.ascontiguousarray(jax_step.images.transpose(0, 3, 1, 2)))
    self.labels = torch.from_numpy(jax_step.labels.astype(np.int64))
    opt = config.optimizer
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=opt.learning_rate,
                                     momentum=opt.momentum, weight_decay=opt.weight_decay)

  def loss(self) -> "torch.Tensor":
    x = (self.images.float() - self.mean) / self.std
    return F.cross_entropy(self.model(x), self.labels)

  def run(self, steps: int) -> Callable[[], object]:
    def call():
      for _ in range(steps):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.optimizer.step()
      return None
    return call


# ----------------------------------------------------------------------------- matmul


def matmul_gflops(n: int, repeats: int) -> tuple[float, float]:
  """GFLOP/s of an n x n float32 matrix product: (JAX, PyTorch or NaN)."""
  rng = np.random.default_rng(0)
  a, b = (rng.normal(size=(n, n)).astype(np.float32) for _ in range(2))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  mm = jax.jit(jnp.matmul)
  fns = {"jax": lambda: mm(ja, jb)}
  if torch is not None:
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns["torch"] = lambda: torch.mm(ta, tb)
  times = common.interleaved_ms(fns, repeats)
  flops = 2.0 * n ** 3
  return (flops / times["jax"] / 1e6,
          flops / times["torch"] / 1e6 if "torch" in times else float("nan"))


# ----------------------------------------------------------------------------- main


def measure(case: Case, peak: float) -> tuple[list, list]:
  """(timing rows, agreement rows) of one model."""
  config = make_config(case)
  jax_step = JaxStep(config)
  side = None
  if torch is not None:
    side = TorchStep(case, config, jax_step)
    jax_loss, torch_loss = jax_step.loss(), float(side.loss().detach())
    agree = [(case.name, f"{jax_loss:.6f}", f"{torch_loss:.6f}",
              f"{abs(jax_loss - torch_loss) / abs(torch_loss):.1e}")]
    if abs(jax_loss - torch_loss) > LOSS_RTOL * abs(torch_loss):
      raise SystemExit(f"{case.name}: the Flax and PyTorch models disagree "
                       f"({jax_loss} vs {torch_loss}); the timings would mean nothing")
  else:
    agree = [(case.name, f"{jax_step.loss():.6f}", "n/a", "n/a")]
  n = case.steps_per_call
  fns = {"jax": jax_step.run(n)}
  if side is not None:
    fns["torch"] = side.run(n)
  times = common.interleaved_ms(fns, case.repeats, per_call={k: n for k in fns})
  t_jax, t_torch = times["jax"], times.get("torch", float("nan"))
  gflops = jax_step.flops / t_jax / 1e6
  rows = [(case.name, config.batch_size, common.ms(t_jax), common.ms(t_torch),
           common.ratio(t_jax, t_torch), f"{gflops:.1f}", f"{gflops / peak:.0%}",
           f"{jax_step.flops / 1e9:.3g} GFLOP/step (XLA); compile {jax_step.compile_s:.1f} s")]
  if case.config == "cifar10_resnet18" and case.repeats > 1:  # not in --quick
    # The config's own step: the same plus the on-device random crop and flip.
    augmented = JaxStep(make_config(dataclasses.replace(
        case, overrides={**case.overrides, "augmentation": "crop_flip"})))
    t_aug = common.interleaved_ms({"aug": augmented.run(n)}, case.repeats,
                                  per_call={"aug": n})["aug"]
    rows.append((f"{case.name} + crop/flip", config.batch_size, common.ms(t_aug), "n/a",
                 "n/a", f"{augmented.flops / t_aug / 1e6:.1f}",
                 f"{augmented.flops / t_aug / 1e6 / peak:.0%}",
                 "the config's step: random crop and flip on the device"))
  return rows, agree


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny models, one repetition")
  parser.add_argument("--models", default="quickstart,resnet18",
                      help="comma-separated: quickstart, resnet18")
  parser.add_argument("--batch", type=int, default=None, help="ResNet-18 batch (default 16)")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch.set_num_threads (default 2; 1 with --quick, which a busy "
                           "machine's oversubscribed OpenMP threads slow down the most)")
  parser.add_argument("--matmul", type=int, default=None, help="matrix size (default 2048)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse(argv)
  args.threads = args.threads or (1 if args.quick else 2)
  if torch is not None:
    torch.set_num_threads(args.threads)
  threads = f"PyTorch threads {args.threads}" if torch is not None else "no PyTorch"
  print(common.machine_line(threads))
  n = args.matmul or (256 if args.quick else 2048)
  peak_jax, peak_torch = matmul_gflops(n, 3 if args.quick else 9)
  rows, agree = [], []
  for name in args.models.split(","):
    r, a = measure(cases(args.quick, args.batch)[name], peak_jax)
    rows += r
    agree += a
  print()
  print(common.table(HEADER, rows, "lrrrrrrl"))
  print()
  print(f"matmul {n}x{n} float32: JAX {peak_jax:.1f} GFLOP/s, PyTorch {peak_torch:.1f} GFLOP/s "
        "(the 'JAX / matmul rate' column divides by JAX's)")
  print()
  print(common.table(("model", "JAX loss", "PyTorch loss", "relative difference"), agree))
  print(common.end_line())


if __name__ == "__main__":
  main()
