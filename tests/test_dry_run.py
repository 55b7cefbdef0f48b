"""Ahead-of-time dry runs of the paper configs at full size on 8 simulated devices."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(config, *overrides):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", f"--config={config}", "--workdir=/nonexistent",
       "--dry_run", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert not os.path.exists("/nonexistent"), "a dry run writes nothing"
  return result.stdout


def field(report: str, name: str) -> str:
  line = next(l for l in report.splitlines() if l.startswith(name))
  return line.split(":", 1)[1].strip()


@pytest.mark.parametrize("config,params,batch", [
    ("configs/quickstart.py", "21,386", "32 examples over mesh {'data': 8}"),
    ("configs/cifar10_resnet18.py", "11,173,962", "128 examples over mesh {'data': 8}"),
    ("configs/imagenet_resnet101.py", "44,549,160", "256 examples over mesh {'data': 8}"),
])
def test_dry_run_reports_parameters_flops_memory_and_sharding(config, params, batch):
  report = dry_run(config)
  assert field(report, "parameters") == params
  assert field(report, "batch sharding").startswith(batch)
  assert field(report, "devices").startswith("8 x")
  step_flops = float(field(report, "train step").split()[0])
  round_flops = float(field(report, "diagnostic round").split()[0])
  assert step_flops > 0 and round_flops > step_flops
  for program in ("train_step", "gradient_stats_update", "power_iteration", "round_summary"):
    assert any(line.strip().startswith(program) for line in report.splitlines())


def test_resnet101_train_step_flops_match_the_architecture():
  """~7.8 GFLOPs per 224x224 image forward (2 x 3.9G multiply-adds), ~3x with backward."""
  report = dry_run("configs/imagenet_resnet101.py")
  per_image = float(field(report, "train step").split()[0]) / 256
  assert 2.0e10 < per_image < 2.8e10, per_image
