"""A corrupted newest checkpoint: reported in one line, moved aside, the run resumed from
the one before; and when none can be read, one line that says how to start over."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invmeasure.training import checkpoints, state as state_lib
from tests.driver import REPO, assert_same_params, assert_same_run, run

SHORT = ["--config.num_train_steps=60", "--config.checkpoint_every_steps=20",
         "--config.diagnostics.every_steps=10"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run; it keeps the checkpoints of steps 40 and 60."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  run(workdir, *SHORT)
  return workdir


def _files(directory):
  return sorted(os.path.join(root, name) for root, _, names in os.walk(directory)
                for name in names)


def flip_bytes(step_dir):
  """Flips a byte in every 64 of each array data file, as a bad disk would."""
  for file in _files(step_dir):
    if f"{os.sep}d{os.sep}" in file:
      data = bytearray(open(file, "rb").read())
      for i in range(0, len(data), 64):
        data[i] ^= 0xFF
      open(file, "wb").write(bytes(data))


def truncate_file(step_dir):
  """Cuts the checkpoint's data file in half, as an interrupted copy does (the tiny
  state's values all lie in the one file of the merged index, `default/d/`)."""
  data = os.path.join(step_dir, "default", "d")
  (name,) = os.listdir(data)
  with open(os.path.join(data, name), "rb+") as f:
    f.truncate(os.path.getsize(os.path.join(data, name)) // 2)


def remove_file(step_dir):
  """Deletes the data set's index (OCDBT manifest) of the step."""
  os.remove(os.path.join(step_dir, "default", "manifest.ocdbt"))


CORRUPTIONS = {"flipped_bytes": flip_bytes, "truncated_file": truncate_file,
               "missing_file": remove_file}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_an_unreadable_newest_checkpoint_is_set_aside_and_the_run_goes_on(
    reference, tmp_path, corruption):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  newest = os.path.join(workdir, "checkpoints", "60")
  CORRUPTIONS[corruption](newest)
  result = run(workdir, *SHORT)
  warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "Traceback" not in result.stderr
  assert warnings[0].startswith("warning: the checkpoint of step 60 cannot be read (")
  assert "resuming from step 40" in warnings[0]
  # Moved aside, not deleted; the rows after step 40 were dropped and written again.
  moved = os.path.join(workdir, "checkpoints", "60" + checkpoints.UNREADABLE_SUFFIX)
  assert os.path.isdir(moved) and _files(moved)
  assert_same_run(workdir, reference, 60)


def test_when_no_checkpoint_can_be_read_one_line_says_how_to_start_over(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  for step in ("40", "60"):
    flip_bytes(os.path.join(workdir, "checkpoints", step))
  before = open(os.path.join(workdir, "metrics.jsonl")).read()
  result = run(workdir, *SHORT, check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: no checkpoint in ") and "step 60: " in last
  assert "step 40: " in last and "To start over, pass a new --workdir" in last
  # Nothing moved or dropped: the user decides.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["40", "60"]
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


def _state(value):
  """A run state with one large leaf: its data lies outside TensorStore's checksums."""
  w = jax.random.normal(jax.random.key(value), (1 << 20,))  # random: it does not compress
  params = {"w": w, "b": jnp.zeros((3,), jnp.int32)}
  return state_lib.RunState(step=jnp.asarray(int(value), jnp.int32), params=params,
                            model_state={}, opt_state=(), init_params=params,
                            sharpness_vector=params, sums=state_lib.zero_sums())


def test_flipped_bytes_in_large_array_data_are_caught_by_the_fingerprints(tmp_path):
  """One flipped bit of a megabyte leaf: TensorStore reads it back without an error, so
  only the fingerprints saved with the checkpoint tell."""
  warnings = []
  checkpointer = checkpoints.Checkpointer(str(tmp_path), warn=warnings.append)
  for step in (1, 2):
    checkpointer.save(_state(step), step)
  checkpointer.wait()
  largest = max(_files(tmp_path / "checkpoints" / "2"), key=os.path.getsize)
  assert os.path.getsize(largest) > 1 << 20
  with open(largest, "rb+") as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x04]))
  restored = checkpointer.restore_latest(_state(0))
  checkpointer.close()
  assert int(restored.step) == 1
  assert_same_params(restored._asdict(), _state(1)._asdict())
  assert len(warnings) == 1 and "step 2 cannot be read (UnreadableCheckpoint: " in warnings[0]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2.unreadable"]


def test_no_checkpoint_restores_nothing_and_a_second_bad_copy_of_a_step_gets_its_own_name(
    tmp_path):
  checkpointer = checkpoints.Checkpointer(str(tmp_path))
  assert checkpointer.restore_latest(_state(0)) is None
  checkpointer.close()
  directory = checkpoints.storage.path(tmp_path / "checkpoints")
  for _ in range(2):
    (directory / "7").mkdir()
    checkpoints.move_aside(directory, 7)
  assert sorted(os.listdir(directory)) == ["7.unreadable", "7.unreadable-2"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32, jnp.uint8, jnp.bool_])
def test_a_fingerprint_changes_with_any_one_bit(dtype, seed):
  rng = np.random.default_rng(seed)
  x = np.asarray(jnp.asarray(rng.integers(0, 2 if dtype == jnp.bool_ else 100, size=257), dtype))
  base = checkpoints.fingerprints({"x": jnp.asarray(x)})
  bits = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.itemsize])
  for _ in range(20):
    flipped = bits.copy()
    bit = 0 if dtype == jnp.bool_ else int(rng.integers(x.itemsize * 8))
    flipped[int(rng.integers(x.size))] ^= 1 << bit
    assert checkpoints.fingerprints({"x": jnp.asarray(flipped.view(x.dtype))}) != base


def test_a_restore_error_is_reported_in_one_short_line():
  error = ValueError('DATA_LOSS: Error opening "zarr" driver: ' + "x" * 500
                     + ': CRC-32C checksum verification failed [tensorstore_spec=\'{"a": 1}\']'
                     + "\nmore lines")
  text = checkpoints.reason(error)
  assert "\n" not in text and len(text) < 240
  assert text.startswith("ValueError: ...") and text.endswith("checksum verification failed")


_NOISE = """
import asyncio, gc, sys
from invmeasure.training import checkpoints
if sys.argv[1] == "quiet":
  checkpoints._drop_failed_restore_reports()
async def read():
  raise ValueError("a read of the failed restore")
async def restore():
  asyncio.ensure_future(read())  # a sibling whose error nobody retrieves
  await asyncio.sleep(0.01)
asyncio.run(restore())
gc.collect()
closed = asyncio.new_event_loop()
closed.close()
class LateRead:
  def __del__(self):
    closed.call_soon_threadsafe(print)  # RuntimeError('Event loop is closed'), unraisable
LateRead()
print("done")
"""


def test_a_failed_restore_leaves_no_traceback_behind():
  """What orbax's failing restore leaves (lost asyncio tasks, reads finishing on its closed
  loop) prints tracebacks at exit; after `restore_latest` has begun, it does not."""
  def stderr(mode):
    result = subprocess.run([sys.executable, "-c", _NOISE, mode], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout == "done\n", result.stderr
    return result.stderr
  noisy = stderr("noisy")
  assert "exception was never retrieved" in noisy and "Event loop is closed" in noisy
  assert stderr("quiet") == ""
