"""Where a run's files live: a local directory or a Cloud Storage bucket (`gs://...`).

All of a run's I/O (config.json, metric rows, figures, TensorBoard, checkpoints) goes
through `path()`, an `etils.epath.Path`, so one `--workdir=gs://bucket/run` serves every
host of a pod. Local paths behave as plain files always did. Object storage differs in two
ways this module hides: a file cannot be appended to (so `MetricWriter` rewrites the whole
object when it flushes), and an object appears whole when its upload ends (so a single
write is already atomic).

`gs://` needs the optional libraries of `pip install 'invmeasure[gcs]'`; without them,
`path()` raises a one-line `ConfigError` before anything is created.

Test hook: with the environment variable `INVMEASURE_TEST_FAKE_GCS=DIR` set, `gs://BUCKET/X`
is served from `DIR/BUCKET/X` by a fake object store (no append; a file appears when it is
closed), and checkpoints go to the same local files (TensorStore's own GCS client cannot be
faked). It lets the tests, and their subprocesses, run a whole `gs://` run without a
network. Never set it for a real run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from typing import Any

from etils import epath

from invmeasure.errors import ConfigError

FAKE_GCS_ENV = "INVMEASURE_TEST_FAKE_GCS"
INSTALL_HINT = "pip install 'invmeasure[gcs]' (gcsfs and google-cloud-storage)"


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` names object storage (`scheme://...`) rather than a local file."""
  return "://" in os.fspath(path)


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # a parent package missing, or a blocked module
    return False


def missing_gcs_libraries() -> list[str]:
  """The modules `gs://` paths need that are not installed: epath's file system (gcsfs, or
  TensorFlow's) and the client orbax lists checkpoints with."""
  missing = []
  if not (_installed("gcsfs") or _installed("tensorflow")):
    missing.append("gcsfs")
  if not _installed("google.cloud.storage"):
    missing.append("google-cloud-storage")
  return missing


def path(value: str | os.PathLike, flag: str = "--workdir") -> epath.Path:
  """`value` as an `epath.Path`, checked to be usable before anything is created.

  Raises:
    ConfigError: one line naming `flag` for a scheme other than `gs://`, or for `gs://`
      without its libraries (and what to install).
  """
  text = os.fspath(value)
  if is_remote(text):
    scheme = text.split("://", 1)[0]
    if scheme != "gs":
      raise ConfigError(f"{flag}={text}: {scheme}:// is not supported; use a local path or "
                        "gs://BUCKET/PATH")
    if os.environ.get(FAKE_GCS_ENV):
      _install_fake_gcs()
    elif missing_gcs_libraries():
      raise ConfigError(f"{flag}={text} needs Cloud Storage support, which is not "
                        f"installed: {INSTALL_HINT}")
  return epath.Path(text)


def check_workdir(workdir: str | os.PathLike) -> epath.Path:
  """The run directory `workdir`, which may not exist yet but must not be a file."""
  directory = path(workdir)
  if directory.exists() and not directory.is_dir():
    raise ConfigError(f"--workdir={workdir} is an existing file; pass a directory "
                      "(it is created if missing)")
  return directory


def makedirs(directory: str | os.PathLike) -> epath.Path:
  directory = path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  return directory


@contextlib.contextmanager
def naming(file: str | os.PathLike):
  """Gives an `OSError` raised inside (a full disk says so only at `write`) the path being
  written, so that whoever reports it can name it."""
  try:
    yield
  except OSError as error:
    if error.filename is None and error.errno is not None:
      raise OSError(error.errno, error.strerror, os.fspath(file)) from error
    raise


def write_text(file: str | os.PathLike, text: str) -> None:
  """Replaces `file` with `text` in one step: readers see the old or the new text."""
  file = path(file)
  with naming(file):
    if is_remote(file):
      file.write_text(text)  # an object appears whole when its upload ends
      return
    tmp = f"{os.fspath(file)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, os.fspath(file))


def save_figure(fig: Any, file: str | os.PathLike, **savefig_kwargs) -> str:
  """`fig.savefig(file)`, for a local file or an object (written whole), its directory
  created if missing; returns `file` as a string."""
  directory = os.path.dirname(os.fspath(file))
  if directory:
    makedirs(directory)
  with naming(file):
    if not is_remote(file):
      fig.savefig(os.fspath(file), **savefig_kwargs)
      return os.fspath(file)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(os.fspath(file))[1][1:] or "png",
                **savefig_kwargs)
    path(file).write_bytes(buffer.getvalue())
  return os.fspath(file)


def checkpoint_directory(workdir: str | os.PathLike) -> epath.Path:
  """Where orbax keeps the checkpoints of `workdir`: absolute, as TensorStore needs."""
  directory = path(workdir) / "checkpoints"
  if not is_remote(directory):
    return epath.Path(os.path.abspath(os.fspath(directory)))
  root = os.environ.get(FAKE_GCS_ENV)
  if root:  # TensorStore reaches gs:// with its own client, which the hook cannot fake
    return epath.Path(os.path.abspath(os.path.join(root, os.fspath(directory)[len("gs://"):])))
  return directory


# TensorBoard event files -----------------------------------------------------------------


class _EventFile:
  """An event file on object storage: the bytes so far, uploaded whole at each flush."""

  def __init__(self, file: str):
    self._file = epath.Path(file)
    self._buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    self._file.write_bytes(self._buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EventFiles:
  """tensorboardX's writer factory for `gs://`, through epath rather than its own client."""

  def open(self, file: str) -> _EventFile:
    return _EventFile(file)

  def directory_check(self, directory: str) -> None:
    del directory  # object storage needs no directories


def tensorboard_writer(directory: str | os.PathLike, **kwargs) -> Any:
  """A `tensorboardX.SummaryWriter` writing event files into `directory`."""
  import tensorboardX
  from tensorboardX import record_writer
  directory = path(directory)
  if is_remote(directory):
    record_writer.register_writer_factory("gs", _EventFiles())
  return tensorboardX.SummaryWriter(os.fspath(directory), **kwargs)


# The test hook -----------------------------------------------------------------------------


class _Upload(io.BytesIO):
  """A file being written to the fake object store: it appears, whole, when closed."""

  def __init__(self, target: str):
    super().__init__()
    self._target = target

  def close(self) -> None:
    if not self.closed:
      os.makedirs(os.path.dirname(self._target), exist_ok=True)
      tmp = f"{self._target}.uploading"
      with open(tmp, "wb") as f:
        f.write(self.getvalue())
      os.replace(tmp, self._target)
    super().close()


_FAKE_INSTALLED = False


def _install_fake_gcs() -> None:
  """Registers the fake object store as fsspec's `gs`/`gcs` file system (once)."""
  global _FAKE_INSTALLED
  if _FAKE_INSTALLED:
    return
  import fsspec
  from fsspec.implementations import dirfs, local

  class FakeGcs(dirfs.DirFileSystem):
    protocol = ("gs", "gcs")

    def __init__(self, *args, **kwargs):
      del args, kwargs  # e.g. epath's finalize_on_close
      super().__init__(path="/", fs=local.LocalFileSystem())  # the root: `path` below

    # Read at each use: fsspec and epath cache this instance across tests' directories.
    path = property(lambda self: os.path.abspath(os.environ[FAKE_GCS_ENV]),
                    lambda self, value: None)

    def open(self, file, mode="rb", **kwargs):
      if "a" in mode or "+" in mode:
        raise NotImplementedError(f"object storage cannot append to {file} (mode {mode!r})")
      if "r" in mode:
        return super().open(file, mode, **kwargs)
      upload = _Upload(self._join(file))
      return upload if "b" in mode else io.TextIOWrapper(upload, encoding="utf-8")

  fsspec.register_implementation("gs", FakeGcs, clobber=True)
  fsspec.register_implementation("gcs", FakeGcs, clobber=True)
  # epath would use TensorFlow's GCS client when TensorFlow is installed; it caches that
  # choice at its first file operation, which may have come before this.
  os.environ["EPATH_USE_TF"] = "false"
  from etils.epath import gpath
  if hasattr(getattr(gpath, "_is_tf_installed", None), "cache_clear"):
    gpath._is_tf_installed.cache_clear()
  _FAKE_INSTALLED = True
