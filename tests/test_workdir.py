"""A work directory a run can be trusted from: its config changes only as recorded, one
run writes it at a time, a finished run says so, and a failed write says what is safe."""

import json
import os
import socket
import subprocess
import time

import pytest

from configs import quickstart
from invmeasure.analysis import figures, runs
from invmeasure.errors import ConfigError, TrainingError
from invmeasure.studies import restore
from invmeasure.training import loop, outputs, provenance, run_lock, storage
from tests.driver import REPO, command, rows


def _config(**fields):
  config = quickstart.get_config("tiny")
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  config.diagnostics.every_steps = 2
  config.update(fields)
  return config


# Config provenance ------------------------------------------------------------------------


def test_a_changed_config_is_refused_in_one_line_naming_every_field(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(_config().to_json_best_effort(indent=2))
  result = subprocess.run(
      command(str(workdir), "--config.seed=3", "--config.optimizer.learning_rate=0.5",
              "--config.num_train_steps=9"),
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0] == (
      f"error: --workdir={workdir} holds a run with another config (optimizer.learning_rate: "
      "0.1 -> 0.5; seed: 0 -> 3; and, which may change: checkpoint_every_steps: 2 -> 4; "
      "diagnostics.every_steps: 2 -> 4; num_train_steps: 4 -> 9); use a new --workdir, or "
      "pass --accept_config_change to continue this run with the change recorded in "
      "config_history.jsonl")
  assert sorted(os.listdir(workdir)) == ["config.json"], "nothing written, no lock left"


def test_fields_that_may_change_pass_and_others_need_the_flag(tmp_path):
  workdir = str(tmp_path)
  provenance.record(workdir, _config(), {}, 0)
  longer = _config(num_train_steps=8, log_every_steps=4, data_dir="/elsewhere")
  assert set(provenance.check(workdir, longer)) == {"num_train_steps", "log_every_steps",
                                                    "data_dir"}
  other = _config(seed=1)
  with pytest.raises(ConfigError, match=r"\(seed: 0 -> 1\); use a new --workdir"):
    provenance.check(workdir, other)
  assert provenance.check(workdir, other, accept=True) == {"seed": (0, 1)}
  provenance.record(workdir, other, {"seed": (0, 1)}, 2)
  (entry,) = provenance.read_history(workdir)
  assert entry["step"] == 2 and entry["accepted_by"] == "--accept_config_change"
  recorded = provenance.read_config(workdir)
  assert recorded["seed"] == 1
  assert provenance.config_at(recorded, [entry], 1)["seed"] == 0
  assert provenance.config_at(recorded, [entry], 2)["seed"] == 1


@pytest.fixture(scope="module")
def lengthened(tmp_path_factory):
  """A 4-step run resumed as a 6-step one: (workdir, the resumed run's last row)."""
  workdir = str(tmp_path_factory.mktemp("lengthened"))
  loop.train_and_evaluate(_config(), workdir)
  return workdir, loop.train_and_evaluate(_config(num_train_steps=6), workdir)


def test_a_longer_run_is_recorded_in_the_history_and_read_by_every_reader(
    lengthened, monkeypatch):
  workdir, last = lengthened
  assert last["step"] == 6 and "train_loss" in last
  assert [r["step"] for r in rows(workdir)] == [0, 2, 4, 6]
  (entry,) = provenance.read_history(workdir)
  assert entry["step"] == 4 and entry["accepted_by"] == "may change mid-run"
  assert entry["changes"] == {"num_train_steps": {"old": 4, "new": 6}}
  run = runs.load_run(workdir)
  assert run.history == [entry]
  assert runs.config_changes(run, x="step") == [(4.0, "num_train_steps 4 -> 6")]
  # The figures mark it and name it in the run's label.
  saved = []
  monkeypatch.setattr(storage, "save_figure", lambda fig, path, **_: saved.append(fig))
  figures.draw_run(workdir)
  labels = [t.get_text() for t in saved[0].legends[0].get_texts()]
  assert any("num_train_steps 4 -> 6" in label for label in labels), labels
  # The studies rebuild the run as it was at the step they restore.
  assert restore.load_config(workdir, 2).num_train_steps == 4
  assert restore.load_config(workdir).num_train_steps == 6


def test_a_finished_run_trains_nothing_and_returns_its_last_row(lengthened, capsys):
  workdir, last = lengthened
  before = rows(workdir)
  assert loop.train_and_evaluate(_config(num_train_steps=6), workdir) == before[-1]
  assert rows(workdir) == before
  assert "is already finished at step 6" in capsys.readouterr().err
  assert not os.path.exists(os.path.join(workdir, run_lock.LOCK_FILE))


# The lock -----------------------------------------------------------------------------------


def _held_by(workdir, **fields):
  record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "then",
            "renewed": time.time(), "lease_s": 60, "token": "other", **fields}
  (workdir / run_lock.LOCK_FILE).write_text(json.dumps(record))


def test_a_live_holder_is_refused_and_a_stale_one_taken_over(tmp_path, capsys):
  _held_by(tmp_path)  # this very process: alive
  with pytest.raises(ConfigError, match=rf"^--workdir={tmp_path} is in use by another run "
                                        rf"\(pid {os.getpid()} on host"):
    run_lock.WorkdirLock(str(tmp_path)).acquire()
  _held_by(tmp_path, host="elsewhere")  # another host, lease fresh
  with pytest.raises(ConfigError, match="in use by another run"):
    run_lock.WorkdirLock(str(tmp_path)).acquire()
  for stale in ({"host": "elsewhere", "renewed": time.time() - 61}, {"pid": 2**22 + 1}):
    _held_by(tmp_path, **stale)
    with run_lock.WorkdirLock(str(tmp_path)):
      assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "notice: took over the stale lock" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


# What the terminal and the rows say ---------------------------------------------------------


def test_curvature_along_a_zero_update_is_left_out_of_the_row():
  row = {"step": 3, "update_sharpness": float("nan"), "update_sharpness_independent": 0.5,
         "step_update_sharpness": float("inf"), "sharpness": float("nan")}
  assert outputs.defined(row) == {"step": 3, "update_sharpness_independent": 0.5,
                                  "sharpness": row["sharpness"]}


class _Saved:
  def __init__(self, step):
    self.step = step

  def latest_step(self):
    return self.step


@pytest.mark.parametrize("saved,safe", [(40, "rows and checkpoint up to step 40 are safe in W"),
                                        (None, "no checkpoint was saved yet in W")])
def test_a_failed_write_is_one_line_naming_the_path_and_what_is_safe(tmp_path, saved, safe):
  target = tmp_path / "metrics.jsonl"
  with pytest.raises(TrainingError) as info:
    with loop._io_errors("W", _Saved(saved)):
      with storage.naming(target):
        raise OSError(28, "No space left on device")  # as a full disk's write() raises it
  assert str(info.value) == (f"cannot write {target}: No space left on device; {safe}; free "
                             "space or fix the permissions, then rerun the same command to "
                             "resume")
