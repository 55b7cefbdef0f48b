"""What config a run ran under: `config.json` and the history of its changes.

`config.json` holds the config the run has now. A resumed run may change the fields in
`MAY_CHANGE` (its length, its logging, checkpoint, diagnostic and projection cadence, and
where its data is read from): each change is appended to `config_history.jsonl` with the
step from which it holds. Any other change is refused (`check`) unless the run is started
with `--accept_config_change`, which records it the same way. `config_at(step)` gives the
config that was in force at a step, for readers of a run (figures, studies, claims).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Mapping

import ml_collections

from invmeasure.errors import ConfigError
from invmeasure.training import storage

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
ACCEPT_FLAG = "--accept_config_change"
# Fields a run may change when it resumes: none of them changes the steps already taken.
MAY_CHANGE = ("num_train_steps", "num_epochs", "log_every_steps", "checkpoint_every_steps",
              "checkpoint_max_to_keep", "data_dir", "diagnostics.every_steps",
              "diagnostics.at_epoch_end", "diagnostics.projection_every_steps")
UNSET = "unset"  # the value shown for a field one of two configs lacks


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts as one dict of dotted keys (`optimizer.learning_rate`)."""
  flat: dict[str, Any] = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as `config.json` records it (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def read_config(workdir: str) -> dict[str, Any] | None:
  """The recorded `config.json` of `workdir`, None when there is none.

  Raises:
    ConfigError: the file is not a JSON object.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not storage.path(path).exists():
    return None
  try:
    config = json.loads(storage.path(path).read_text())
  except json.JSONDecodeError as error:
    raise ConfigError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}); restore "
                      "it or use a new --workdir") from None
  if not isinstance(config, dict):
    raise ConfigError(f"{path}: expected a JSON object, got {type(config).__name__}")
  return config


def read_history(workdir: str) -> list[dict[str, Any]]:
  """The recorded changes, oldest first: each `{"step", "time", "accepted_by", "changes":
  {field: {"old", "new"}}}`; [] for a run that never changed its config."""
  path = storage.path(os.path.join(workdir, HISTORY_FILE))
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
  """{field: (old value, new value)} of every dotted field that differs."""
  a, b = flatten(old), flatten(new)
  same = lambda key: json.dumps(a.get(key, UNSET)) == json.dumps(b.get(key, UNSET))  # NaN too
  return {key: (a.get(key, UNSET), b.get(key, UNSET)) for key in sorted(set(a) | set(b))
          if not same(key)}


def _show(value: Any) -> str:
  return json.dumps(value) if isinstance(value, str) and value != UNSET else str(value)


def check(workdir: str, config: ml_collections.ConfigDict,
          accept: bool = False) -> dict[str, tuple]:
  """The changes of `config` against the run recorded in `workdir` ({} for a new run).

  Raises:
    ConfigError: unless `accept`, when a field outside `MAY_CHANGE` differs: one line
      naming every differing field with its old and new values.
  """
  recorded = read_config(workdir)
  if recorded is None:
    return {}
  changes = differences(recorded, as_json(config))
  refused = {k: v for k, v in changes.items() if k not in MAY_CHANGE}
  if refused and not accept:
    show = lambda fields: "; ".join(f"{k}: {_show(old)} -> {_show(new)}"  # noqa: E731
                                    for k, (old, new) in fields.items())
    allowed = {k: v for k, v in changes.items() if k not in refused}
    listed = show(refused) + (f"; and, which may change: {show(allowed)}" if allowed else "")
    raise ConfigError(
        f"--workdir={workdir} holds a run with another config ({listed}); use a new "
        f"--workdir, or pass {ACCEPT_FLAG} to continue this run with the change recorded in "
        f"{HISTORY_FILE}")
  return changes


def record(workdir: str, config: ml_collections.ConfigDict, changes: Mapping[str, tuple],
           step: int) -> None:
  """Writes `config.json` and appends `changes`, in force from `step`, to the history."""
  if changes and step > 0:
    accepted_by = ("may change mid-run" if all(k in MAY_CHANGE for k in changes)
                   else ACCEPT_FLAG)
    entry = {"step": step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                 timespec="seconds"), "accepted_by": accepted_by,
             "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}}
    path = os.path.join(workdir, HISTORY_FILE)
    old_text = storage.path(path).read_text() if storage.path(path).exists() else ""
    storage.write_text(path, old_text + json.dumps(entry) + "\n")
  elif step == 0:
    # Nothing was kept (no checkpoint): the run starts over, and so does its history.
    storage.path(os.path.join(workdir, HISTORY_FILE)).unlink(missing_ok=True)
  if changes or read_config(workdir) is None:
    storage.write_text(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


def config_at(config: Mapping[str, Any], history: list[dict[str, Any]],
              step: int) -> dict[str, Any]:
  """The config (nested dicts, as `config.json` holds it) in force at `step`: `config`
  with every change recorded after `step` undone."""
  flat = flatten(config)
  for entry in reversed(history):
    if entry["step"] > step:
      for key, change in entry["changes"].items():
        if change["old"] == UNSET:
          flat.pop(key, None)
        else:
          flat[key] = change["old"]
  nested: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = nested
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return nested
