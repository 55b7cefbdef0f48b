"""Run directories on object storage: a `gs://` work directory under the fake object store
of `storage`'s test hook (INVMEASURE_TEST_FAKE_GCS), and without the cloud libraries."""

import os
import re
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from invmeasure.analysis import synthetic_figures
from invmeasure.training import metric_writer, storage, synthetic_1d
from invmeasure.errors import ConfigError
from tests.driver import REPO, assert_same_run, rows, run

import configs.synthetic_1d

CONFIG = os.path.join(REPO, "configs", "quickstart.py") + ":tiny"
SHORT = ["--config.num_train_steps=60", "--config.checkpoint_every_steps=20",
         "--config.diagnostics.every_steps=10"]
BUCKET_RUN = "gs://bucket/runs/tiny"


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """The fake object store's root directory, for this process and its subprocesses."""
  root = tmp_path / "fake_gcs"
  root.mkdir()
  monkeypatch.setenv(storage.FAKE_GCS_ENV, str(root))
  return root


def _local(root, url):
  """Where the fake object store keeps `url`."""
  return os.path.join(root, url[len("gs://"):])


def _start(workdir, cwd, *overrides, env=None):
  """experiments.run in `cwd` (not the repository), so stray local files would show."""
  env = {**os.environ, **(env or {}), "PYTHONPATH": REPO}
  return subprocess.Popen([sys.executable, "-m", "experiments.run", f"--config={CONFIG}",
                           f"--workdir={workdir}", *overrides], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _entry_point(module, cwd, *args, env):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                        env={**os.environ, **env, "PYTHONPATH": REPO}, capture_output=True,
                        text=True, timeout=300)


def _event_records(path):
  """The records of a TensorBoard event file, each checked against its framing."""
  data = open(path, "rb").read()
  records, offset = 0, 0
  while offset < len(data):
    (length,) = struct.unpack("Q", data[offset:offset + 8])
    offset += 12 + length + 4
    records += 1
  assert offset == len(data)
  return records


def test_local_paths_are_plain_paths(tmp_path):
  directory = storage.path(tmp_path / "run")
  assert os.fspath(directory) == str(tmp_path / "run") and not storage.is_remote(directory)
  storage.write_text(tmp_path / "x.json", "{}")
  assert (tmp_path / "x.json").read_text() == "{}" and not (tmp_path / "x.json.tmp").exists()
  assert storage.checkpoint_directory("rel/run") == storage.path(
      os.path.abspath("rel/run/checkpoints"))


def test_other_schemes_and_a_file_are_one_line_errors(tmp_path):
  with pytest.raises(ConfigError, match=r"^--workdir=s3://b/run: s3:// is not supported"):
    storage.path("s3://b/run")
  (tmp_path / "afile").write_text("x")
  with pytest.raises(ConfigError, match="is an existing file"):
    storage.check_workdir(tmp_path / "afile")


def test_gs_without_the_cloud_libraries_names_what_to_install(monkeypatch):
  monkeypatch.delenv(storage.FAKE_GCS_ENV, raising=False)
  for module in ("gcsfs", "tensorflow", "google.cloud.storage"):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
  assert storage.missing_gcs_libraries() == ["gcsfs", "google-cloud-storage"]
  with pytest.raises(ConfigError) as info:
    storage.path("gs://bucket/run")
  assert str(info.value) == ("--workdir=gs://bucket/run needs Cloud Storage support, which "
                             f"is not installed: {storage.INSTALL_HINT}")


@pytest.mark.parametrize("config", [CONFIG, os.path.join(REPO, "configs", "synthetic_1d.py")])
def test_a_gs_workdir_without_the_cloud_libraries_fails_at_once_and_creates_nothing(
    tmp_path, config):
  # Hides the libraries even where they are installed, then runs the entry point.
  hide = ("import runpy, sys; sys.modules.update(dict.fromkeys(['gcsfs', 'tensorflow', "
          "'google.cloud.storage'])); "
          "runpy.run_module('experiments.run', run_name='__main__')")
  env = {k: v for k, v in os.environ.items() if k != storage.FAKE_GCS_ENV}
  result = subprocess.run([sys.executable, "-c", hide, f"--config={config}",
                           "--workdir=gs://bucket/run"], cwd=tmp_path,
                          env={**env, "PYTHONPATH": REPO}, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "error: --workdir=gs://bucket/run needs Cloud Storage support, which is not installed: "
      f"{storage.INSTALL_HINT}"]
  assert os.listdir(tmp_path) == []  # no `gs:` folder, nothing else


def test_metric_rows_on_object_storage_are_uploaded_whole_and_resume(fake_gcs):
  url = f"{BUCKET_RUN}/metrics.jsonl"
  with pytest.raises(NotImplementedError):  # the fake store, like Cloud Storage, cannot append
    storage.path(url).open("a")
  writer = metric_writer.MetricWriter(url)
  writer.write({"step": 1, "train_loss": np.float32(2.5)})
  assert not os.path.exists(_local(fake_gcs, url))  # uploaded at flush, not per row
  writer.flush()
  assert metric_writer.read_metrics(url) == [{"step": 1, "train_loss": 2.5}]
  writer.write({"step": 2})
  writer.close()
  with pytest.raises(ValueError):
    writer.write({"step": 3})
  with open(_local(fake_gcs, url), "a") as f:
    f.write('{"step": 3, "tra')  # a partial last line, as a copy cut short leaves it
  with metric_writer.MetricWriter(url) as resumed:
    resumed.write({"step": 3})
  assert [r["step"] for r in metric_writer.read_metrics(url)] == [1, 2, 3]


def test_the_synthetic_example_writes_into_a_bucket(fake_gcs):
  config = configs.synthetic_1d.get_config()
  config.num_steps = 20
  written = synthetic_1d.run(config, "gs://bucket/synthetic")
  synthetic_figures.draw_run("gs://bucket/synthetic", written, config)
  local = _local(fake_gcs, "gs://bucket/synthetic")
  assert metric_writer.read_metrics(os.path.join(local, "metrics.jsonl")) == written
  assert sorted(os.listdir(local)) == ["config.json", "figures", "metrics.jsonl"]
  assert os.listdir(os.path.join(local, "figures")) == ["synthetic_1d.png"]


def test_a_gs_run_resumes_exactly_after_a_kill(fake_gcs, tmp_path):
  reference = str(tmp_path / "local")
  run(reference, *SHORT)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  env = {storage.FAKE_GCS_ENV: str(fake_gcs)}
  local = _local(fake_gcs, BUCKET_RUN)
  # Rows reach the bucket at checkpoints: kill once the first checkpoint is complete.
  process = _start(BUCKET_RUN, cwd, *SHORT, env=env)
  first = os.path.join(local, "checkpoints", "20")
  while process.poll() is None and not os.path.exists(first):
    time.sleep(0.005)
  process.kill()
  process.communicate()
  assert process.returncode != 0, "the run ended before it could be killed"
  assert 0 < len(rows(local)) < len(rows(reference))
  process = _start(BUCKET_RUN, cwd, *SHORT, env=env)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  assert f"Finished {BUCKET_RUN}:" in stdout
  assert re.search(r"\b(20|40)/60\b", stderr.split("\r")[0]), "resumed from a checkpoint"
  assert_same_run(local, reference, 60)
  assert sorted(os.listdir(os.path.join(local, "figures"))) == sorted(
      os.listdir(os.path.join(reference, "figures")))
  events = [os.path.join(local, "tensorboard", name)
            for name in os.listdir(os.path.join(local, "tensorboard"))]
  assert events and all(_event_records(path) > 1 for path in events)
  assert os.listdir(cwd) == []  # nothing written locally: no `gs:` folder
  # The read-only entry points on the bucket run: no lock, nothing written locally.
  plot = _entry_point("experiments.plot", cwd, f"--workdir={BUCKET_RUN}",
                      f"--out_dir={BUCKET_RUN}/replotted", env=env)
  assert plot.returncode == 0, plot.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(local, "replotted"))) == sorted(
      os.listdir(os.path.join(reference, "figures")))
  regime = _entry_point("experiments.regime", cwd, f"--workdir={BUCKET_RUN}",
                        f"--out={BUCKET_RUN}/regime.md", env=env)
  assert "Traceback" not in regime.stderr and "loss plateaus above zero" in regime.stdout
  assert open(os.path.join(local, "regime.md")).read().strip() == regime.stdout.strip()
  assert os.listdir(cwd) == [] and "lock.json" not in os.listdir(local)


def test_a_gs_data_dir_without_the_cloud_libraries_is_one_line(monkeypatch):
  import configs.quickstart
  from invmeasure.training import config_checks
  monkeypatch.delenv(storage.FAKE_GCS_ENV, raising=False)
  for module in ("gcsfs", "tensorflow", "google.cloud.storage"):
    monkeypatch.setitem(sys.modules, module, None)
  config = configs.quickstart.get_config("tiny")
  config.data_dir = "gs://bucket/tensorflow_datasets"
  with pytest.raises(ConfigError, match=r"^config.data_dir=gs://bucket/tensorflow_datasets "
                                        r"needs Cloud Storage support, .* pip install"):
    config_checks.check_config(config, 8)


def test_save_figure_creates_the_directory_locally_and_in_a_bucket(fake_gcs, tmp_path):
  from matplotlib.figure import Figure
  fig = Figure(figsize=(1, 1))
  fig.subplots().plot([0, 1], [1, 0])
  local = str(tmp_path / "new" / "deeper" / "a.png")
  assert storage.save_figure(fig, local) == local
  assert open(local, "rb").read(4) == b"\x89PNG"
  remote = "gs://bucket/figures/new/b.png"
  assert storage.save_figure(fig, remote) == remote
  assert storage.path(remote).read_bytes()[:4] == b"\x89PNG"
