"""Checks a training config before anything is written; each problem is one ConfigError."""

from __future__ import annotations

import ml_collections

from invmeasure.data import augment as augment_lib, sources, text_sources
from invmeasure.models import registry
from invmeasure.training import optim, step as step_lib, storage
from invmeasure.errors import ConfigError


def _positive(value, field: str, kind=float) -> None:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or (
      kind is int and int(value) != value):
    noun = "a positive integer" if kind is int else "a positive number"
    raise ConfigError(f"config.{field}={value!r} must be {noun}")


def check_workdir(workdir: str) -> None:
  """A local or `gs://` run directory that can be used (see `storage.check_workdir`)."""
  storage.check_workdir(workdir)


REQUIRED = ("seed", "dataset", "model.name", "batch_size", "optimizer.name",
            "optimizer.learning_rate", "schedule.name", "diagnostics.every_steps",
            "diagnostics.num_minibatches", "diagnostics.sharpness_iters",
            "checkpoint_every_steps", "log_every_steps")
DATASETS = sources.DATASETS + text_sources.DATASETS


def _has(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def check_config(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Raises ConfigError for the first field that cannot work."""
  missing = [field for field in REQUIRED if not _has(config, field)]
  if missing:
    raise ConfigError(f"config.{missing[0]} is missing; a training config needs "
                      f"{', '.join(REQUIRED)} (see configs/quickstart.py)")
  if config.get("data_dir"):  # gs:// needs the [gcs] extra, as a workdir there does
    storage.path(config.data_dir, flag="config.data_dir")
  if config.dataset not in DATASETS:
    raise ConfigError(f"config.dataset={config.dataset!r} is unknown; choose one of "
                      f"{', '.join(DATASETS)}")
  text = config.dataset in text_sources.DATASETS
  if not text and not _has(config, "num_classes"):  # a language model's comes from the data
    raise ConfigError("config.num_classes is missing; an image data set needs it "
                      "(see configs/quickstart.py)")
  if config.model.name not in registry.MODELS:
    raise ConfigError(f"config.model.name={config.model.name!r} is unknown; choose one of "
                      f"{', '.join(sorted(registry.MODELS))}")
  if text != (config.model.name in registry.LANGUAGE_MODELS):
    kind, choices = (("a language model", registry.LANGUAGE_MODELS) if text else
                     ("an image classifier",
                      sorted(set(registry.MODELS) - set(registry.LANGUAGE_MODELS))))
    raise ConfigError(f"config.model.name={config.model.name!r} does not fit "
                      f"config.dataset={config.dataset!r}, which needs {kind}: one of "
                      f"{', '.join(choices)}")
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise ConfigError(f"config.optimizer.name={config.optimizer.name!r} is unknown; "
                      f"choose one of {', '.join(optim.OPTIMIZERS)}")
  if config.schedule.name not in optim.SCHEDULES:
    raise ConfigError(f"config.schedule.name={config.schedule.name!r} is unknown; "
                      f"choose one of {', '.join(optim.SCHEDULES)}")
  _check_augmentation(config, text)
  _positive(config.optimizer.learning_rate, "optimizer.learning_rate")
  _positive(config.batch_size, "batch_size", int)
  if config.batch_size % device_count:
    raise ConfigError(f"config.batch_size={config.batch_size} does not split over "
                      f"{device_count} devices; use a multiple of {device_count}")
  if config.get("num_train_steps"):
    _positive(config.num_train_steps, "num_train_steps", int)
  else:
    _positive(config.get("num_epochs"), "num_epochs")
  if config.optimizer.get("weight_decay", 0.0) < 0:
    raise ConfigError(f"config.optimizer.weight_decay={config.optimizer.weight_decay} "
                      "must be >= 0")
  if config.optimizer.get("clip_norm", 0.0) < 0:
    raise ConfigError(f"config.optimizer.clip_norm={config.optimizer.clip_norm} must be "
                      ">= 0 (0: no clipping)")
  if not 0 <= config.optimizer.get("momentum", 0.0) < 1:
    raise ConfigError(f"config.optimizer.momentum={config.optimizer.momentum} must be "
                      "in [0, 1)")
  for field in ("log_every_steps", "checkpoint_every_steps"):
    _positive(config[field], field, int)
  _positive(config.get("checkpoint_max_to_keep", 2), "checkpoint_max_to_keep", int)
  if config.get("train_examples", 0):
    _positive(config.train_examples, "train_examples", int)
  diag = config.diagnostics
  unknown = [n for n in step_lib.per_step_names(config) if n not in step_lib.PER_STEP]
  if unknown:
    raise ConfigError(f"config.diagnostics.per_step names {unknown[0]!r}, which is unknown; "
                      f"choose among {', '.join(step_lib.PER_STEP)} (comma-separated)")
  _check_per_example(config)
  if diag.get("num_projections", 0):
    _positive(diag.num_projections, "diagnostics.num_projections", int)
    _positive(diag.get("projection_every_steps"), "diagnostics.projection_every_steps", int)
  if diag.every_steps:
    _positive(diag.every_steps, "diagnostics.every_steps", int)
    if diag.num_minibatches < 2:
      raise ConfigError(f"config.diagnostics.num_minibatches={diag.num_minibatches} must "
                        "be >= 2 to estimate the gradient noise")
    _positive(diag.sharpness_iters, "diagnostics.sharpness_iters", int)
    if diag.get("batch_size"):
      _positive(diag.batch_size, "diagnostics.batch_size", int)
      if diag.batch_size % device_count:
        raise ConfigError(f"config.diagnostics.batch_size={diag.batch_size} does not split "
                          f"over {device_count} devices; use a multiple of {device_count}")


def _check_augmentation(config: ml_collections.ConfigDict, text: bool) -> None:
  augment = config.diagnostics.get("augment", "train")
  if augment not in ("train", "none"):
    raise ConfigError(f"config.diagnostics.augment={augment!r} is unknown; choose 'train' "
                      "(minibatches augmented as training batches) or 'none'")
  if text:
    if augment != "none":
      raise ConfigError(f"config.diagnostics.augment={augment!r} does not apply to a language "
                        "model (its rounds run dropout off; config.diagnostics.memory sets their "
                        "memory); set 'none'")
    return
  name = config.get("augmentation", "none")
  if name not in augment_lib.AUGMENTATIONS:
    raise ConfigError(f"config.augmentation={name!r} is unknown; choose one of "
                      f"{', '.join(augment_lib.AUGMENTATIONS)}")
  shift = config.get("augmentation_shift", 1)
  if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0:
    raise ConfigError(f"config.augmentation_shift={shift!r} must be an integer >= 0 (pixels)")
  noise = config.get("augmentation_noise_std", 0.0)
  if not isinstance(noise, (int, float)) or isinstance(noise, bool) or noise < 0:
    raise ConfigError(f"config.augmentation_noise_std={noise!r} must be a number >= 0")


def _check_per_example(config: ml_collections.ConfigDict) -> None:
  """The per-example instruments: an image task, plain SGD where they need it, and a
  chunk size that divides the batch."""
  names = step_lib.per_step_names(config)
  wanted = [n for n in names if n in step_lib.PER_EXAMPLE]
  if not wanted:
    return
  if config.dataset in text_sources.DATASETS:
    raise ConfigError(f"config.diagnostics.per_step names {wanted[0]!r}, a per-example "
                      "instrument, which the language-model task does not measure; use it "
                      "with an image config")
  opt = config.optimizer
  for name in (n for n in names if n in step_lib.SGD_ONLY):
    if (opt.name != "sgd" or opt.get("momentum", 0.0) or opt.get("weight_decay", 0.0)
        or opt.get("nesterov", False)):
      raise ConfigError(f"config.diagnostics.per_step names {name!r}, defined for SGD "
                        f"without momentum or weight decay only; config.optimizer is "
                        f"{opt.name!r} with momentum={opt.get('momentum', 0.0)}, "
                        f"weight_decay={opt.get('weight_decay', 0.0)}")
  chunk = config.diagnostics.get("per_example_chunk_size", 0)
  if chunk and (chunk < 0 or config.batch_size % chunk):
    raise ConfigError(f"config.diagnostics.per_example_chunk_size={chunk} must divide "
                      f"config.batch_size={config.batch_size} (0: the whole batch)")
