"""One writer per work directory: `workdir/lock.json` names the run that holds it.

The file holds the holder's host, process id (and, on Linux, the process's start time, so a
reused pid does not pass for the holder), when it started, and a lease the holder renews
from a thread every `lease_s / 4` seconds. A second run is refused in one line naming the
holder. A lock is stale, and is taken over with a one-line notice, when its process is gone
(same host) or its lease has expired (another host: a shared or `gs://` directory). On a
local disk the lock is created and taken over atomically (`os.link`, `os.rename`); on object
storage, which has neither, the taker reads its lock back after a pause and yields if
another run wrote over it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid

from invmeasure.errors import ConfigError
from invmeasure.training import storage

LOCK_FILE = "lock.json"
LEASE_SECONDS = 120.0
# How long a taker on object storage waits before reading its lock back.
_SETTLE_SECONDS = 1.0


def _process_start(pid: int) -> str | None:
  """The start time of `pid` in clock ticks since boot (Linux), None where unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None
  # fields[0] is the state (field 3); the start time is field 22.
  return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, start: str | None) -> bool:
  """Whether process `pid` (started at `start`, if known) still runs on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's process: it exists
  now = _process_start(pid)
  if os.path.exists(f"/proc/{pid}/stat") and now is None:
    return False  # a zombie: killed, not yet reaped
  return start is None or now is None or now == start


def is_stale(held: dict, now: float | None = None) -> bool:
  """Whether the run that wrote `held` is gone: its process (same host) or its lease."""
  if held.get("host") == socket.gethostname():
    return not _alive(int(held.get("pid", -1)), held.get("pid_start"))
  now = time.time() if now is None else now
  return now - float(held.get("renewed", 0)) > float(held.get("lease_s", LEASE_SECONDS))


def describe(held: dict) -> str:
  return (f"pid {held.get('pid', '?')} on host {held.get('host', '?')}, started "
          f"{held.get('started', '?')}")


class WorkdirLock:
  """The lock of one work directory, held from `acquire()` to `release()`."""

  def __init__(self, workdir: str, lease_s: float = LEASE_SECONDS):
    self.file = os.path.join(os.fspath(workdir), LOCK_FILE)
    self._record = {
        "host": socket.gethostname(), "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lease_s": lease_s, "token": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._renewer: threading.Thread | None = None

  def acquire(self) -> None:
    """Takes the lock, taking over a stale one with a notice on stderr.

    Raises:
      ConfigError: one line naming the run that holds the lock.
    """
    for _ in range(5):
      held = self._read()
      if held is None:
        if self._create():
          break
        continue  # another run created it first: look again
      if held.get("token") == self._record["token"]:
        break
      if not is_stale(held):
        raise ConfigError(
            f"--workdir={os.path.dirname(self.file)} is in use by another run ({describe(held)}; "
            f"{self.file}); wait for it to end, or use another --workdir")
      if self._take_over(held):
        print(f"notice: took over the stale lock of {describe(held)} ({self.file}): "
              "its process is gone or its lease expired", file=sys.stderr, flush=True)
        break
    else:
      raise ConfigError(f"could not take the lock {self.file}: other runs keep writing it; "
                        "make sure only one run uses this --workdir")
    self._renewer = threading.Thread(target=self._renew, daemon=True, name="workdir-lock")
    self._renewer.start()

  def release(self) -> None:
    """Stops renewing and removes the lock if it is still this run's."""
    self._stop.set()
    if self._renewer is not None:
      self._renewer.join()
    held = self._read()
    if held is not None and held.get("token") == self._record["token"]:
      storage.path(self.file).unlink(missing_ok=True)

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def _text(self) -> str:
    return json.dumps({**self._record, "renewed": time.time()}) + "\n"

  def _read(self) -> dict | None:
    try:
      text = storage.path(self.file).read_text()
    except FileNotFoundError:
      return None
    try:
      return json.loads(text)
    except json.JSONDecodeError:
      return {}  # cut short by a crash: nobody's, hence stale

  def _create(self) -> bool:
    """Writes the lock if there is none; whether this run now holds it."""
    if storage.is_remote(self.file):
      return self._write_and_confirm()
    tmp = f"{self.file}.{self._record['token']}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(self._text())
    try:
      os.link(tmp, self.file)  # fails if the file exists: creation and content in one step
      return True
    except FileExistsError:
      return False
    finally:
      os.remove(tmp)

  def _take_over(self, held: dict) -> bool:
    if storage.is_remote(self.file):
      return self._write_and_confirm()
    aside = f"{self.file}.stale-{self._record['token']}"
    try:
      os.rename(self.file, aside)  # of several takers only one moves the stale lock
    except FileNotFoundError:
      return False
    if (self._read_file(aside) or {}).get("token") != held.get("token"):
      os.rename(aside, self.file)  # a fresh lock arrived meanwhile: put it back
      return False
    os.remove(aside)
    return self._create()

  @staticmethod
  def _read_file(file: str) -> dict | None:
    try:
      with open(file, encoding="utf-8") as f:
        return json.load(f)
    except (OSError, json.JSONDecodeError):
      return None

  def _write_and_confirm(self) -> bool:
    storage.write_text(self.file, self._text())
    time.sleep(_SETTLE_SECONDS)
    return (self._read() or {}).get("token") == self._record["token"]

  def _renew(self) -> None:
    while not self._stop.wait(float(self._record["lease_s"]) / 4):
      held = self._read()
      if held is None or held.get("token") != self._record["token"]:
        print(f"warning: {self.file} was taken by another run ({describe(held or {})}); "
              "two runs may now write this directory", file=sys.stderr, flush=True)
        return
      try:
        storage.write_text(self.file, self._text())
      except OSError:
        pass  # renewed again at the next tick; a full disk is reported by the run's writes
