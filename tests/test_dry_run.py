"""Ahead-of-time dry runs of the paper configs at full size on simulated devices (8, or 4
for WikiText-103, whose batch of 60 does not split over 8)."""

import os
import subprocess
import sys

import pytest

from tests.driver import REPO
from tests.flags import FAST_CODEGEN


# LLVM's code generation at full optimisation is a quarter of a full-size dry run's time,
# and the report (parameters, FLOPs, buffer sizes) comes from XLA's HLO, which
# FAST_CODEGEN leaves alone: the ResNet-101 report is the same line for line, 139 s -> 106 s.


def dry_run(config, *overrides, devices=8):
  env = {**os.environ,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_CODEGEN}"}
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", f"--config={config}", "--workdir=/nonexistent",
       "--dry_run", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert not os.path.exists("/nonexistent"), "a dry run writes nothing"
  return result.stdout


def field(report: str, name: str) -> str:
  line = next(l for l in report.splitlines() if l.startswith(name))
  return line.split(":", 1)[1].strip()


def flops(report: str, name: str) -> tuple[float, float]:
  """(in all, per device) from 'X FLOPs in all, Y per device'."""
  words = field(report, name).split()
  return float(words[0]), float(words[4])


@pytest.mark.parametrize("config,devices,params,batch", [
    ("configs/quickstart.py", 8, "21,386", "32 examples over mesh {'data': 8}"),
    ("configs/cifar10_resnet18.py", 8, "11,173,962", "128 examples over mesh {'data': 8}"),
    ("configs/imagenet_resnet101.py", 8, "44,549,160", "256 examples over mesh {'data': 8}"),
    # 4 layers of the base model and its 267,735-token adaptive input and softmax.
    ("configs/wt103_transformerxl.py", 4, "120,307,738", "60 examples over mesh {'data': 4}"),
])
def test_dry_run_reports_parameters_flops_memory_and_sharding(config, devices, params, batch):
  report = dry_run(config, devices=devices)
  step_total, step_device = flops(report, "train step")
  assert step_total == pytest.approx(devices * step_device, rel=1e-3)
  if "resnet101" in config:
    # ResNet-101 forward: 7.8G multiply-adds per 224x224 image; training ~3x, 2 FLOPs each.
    assert 4.0e10 < step_total / 256 < 5.2e10, step_total / 256
  if "wt103" in config:
    # 9,000 tokens, ~6 FLOPs per weight per token: the layers (10.3M weights) and the head
    # (20,003 x 410), plus each tail cluster's softmax (247,735 x 410 in all) over 1 to 3
    # rounds of 1,024 of a device's 2,250 positions, forward, recomputed and backward.
    assert 3e12 < step_total < 1.2e13, step_total
  assert field(report, "parameters") == params
  assert field(report, "batch sharding").startswith(batch)
  assert field(report, "devices").startswith(f"{devices} x")
  round_total, _ = flops(report, "diagnostic round")
  assert step_total > 0 and round_total > step_total
  for program in ("train_step", "gradient_stats_update", "power_iteration", "round_summary"):
    assert any(line.strip().startswith(program) for line in report.splitlines())
