"""Models by config name."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from invmeasure.models import resnet, small, transformer_xl
from invmeasure.errors import ConfigError


def _small_cnn(cfg, num_classes):
  return small.SmallCNN(widths=tuple(cfg.widths), num_classes=num_classes,
                        use_batchnorm=cfg.get("batchnorm", False),
                        dropout_rate=cfg.get("dropout_rate", 0.0))


def _mlp(cfg, num_classes):
  return small.MLP(features=tuple(cfg.widths), num_classes=num_classes)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _resnet(cfg, num_classes):
  depth, stem = cfg.get("depth", 18), cfg.get("stem", "imagenet")
  dtype = cfg.get("dtype", "float32")
  if depth not in resnet.DEPTHS:
    raise ConfigError(f"config.model.depth={depth!r} is not a ResNet depth; choose one of "
                      f"{', '.join(map(str, resnet.DEPTHS))}")
  if stem not in resnet.STEMS:
    raise ConfigError(f"config.model.stem={stem!r} is unknown; choose one of "
                      f"{', '.join(resnet.STEMS)}")
  if dtype not in _DTYPES:
    raise ConfigError(f"config.model.dtype={dtype!r} is unknown; choose one of "
                      f"{', '.join(_DTYPES)}")
  return resnet.resnet(depth, num_classes, stem, width=cfg.get("width", 64),
                       zero_init_residual=cfg.get("zero_init_residual", False),
                       dtype=_DTYPES[dtype])


MODELS = {"small_cnn": _small_cnn, "mlp": _mlp, "resnet": _resnet,
          "transformer_xl": transformer_xl.transformer_xl}
# The models that read token segments (language-model data sets); the others classify images.
LANGUAGE_MODELS = ("transformer_xl",)


def make_model(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The model named by `config.model.name`, sized by the other model fields.

  `num_classes` is the number of outputs: a classifier's classes, a language model's
  vocabulary size.
  """
  try:
    build = MODELS[cfg.name]
  except KeyError:
    raise ConfigError(f"config.model.name={cfg.name!r} is unknown; choose one of "
                      f"{', '.join(sorted(MODELS))}") from None
  return build(cfg, num_classes)
