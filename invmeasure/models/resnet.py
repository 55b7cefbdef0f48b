"""ResNet (He et al. 2016) in Flax Linen, layer for layer as torchvision's reference.

- BasicBlock (two 3x3 convs) for depths 18 and 34; Bottleneck (1x1, 3x3, 1x1 with 4x
  expansion) for 50, 101 and 152, striding on the 3x3 conv (torchvision's "v1.5").
- Every conv is bias-free and followed by BatchNorm (momentum 0.9, i.e. PyTorch's 0.1,
  eps 1e-5); a block's shortcut is a strided 1x1 conv + BatchNorm when its shape changes.
- Stems: 'imagenet' (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) and 'cifar' (3x3/1 conv, BN,
  ReLU, no pooling). Then four stages, global average pooling and a dense head.
- Initialisation as torchvision: convs kaiming-normal (fan_out, ReLU gain), BatchNorm
  scale 1 and bias 0 (the last BN scale of each block 0 with `zero_init_residual`), the
  head uniform in +-1/sqrt(fan_in).
- BatchNorm's running variance averages the biased batch variance (Flax); PyTorch
  averages the unbiased one, a factor B / (B - 1) per batch of B values per channel.
- Padding is explicit and symmetric as in PyTorch, so weights port across unchanged;
  module names follow torchvision (`conv1`, `bn1`, `layer1_0`, `downsample_conv`, `fc`).

`dtype` sets the compute dtype (e.g. bfloat16); parameters and BatchNorm statistics stay
in float32, and the logits are returned in float32 so the loss is computed in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch's kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / fan_out), untruncated.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Residual stages per depth: (block kind, blocks in each of the four stages).
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STEMS = ("imagenet", "cifar")


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free conv with PyTorch's symmetric padding of kernel // 2."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_init, name=name)


def _batchnorm(train: bool, dtype: Any, name: str, zero_scale: bool = False) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32,
                      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
                      name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs; the first strides. Output channels: `features`."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    out = nn.relu(_batchnorm(train, self.dtype, "bn1")(out))
    out = _conv(self.features, 3, 1, self.dtype, "conv2")(out)
    out = _batchnorm(train, self.dtype, "bn2", zero_scale=self.zero_init_residual)(out)
    return nn.relu(out + _shortcut(x, self.features, self.stride, train, self.dtype))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand. Output channels: 4 * `features`."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
    out = nn.relu(_batchnorm(train, self.dtype, "bn1")(out))
    out = _conv(self.features, 3, self.stride, self.dtype, "conv2")(out)
    out = nn.relu(_batchnorm(train, self.dtype, "bn2")(out))
    out = _conv(self.features * self.expansion, 1, 1, self.dtype, "conv3")(out)
    out = _batchnorm(train, self.dtype, "bn3", zero_scale=self.zero_init_residual)(out)
    return nn.relu(out + _shortcut(x, self.features * self.expansion, self.stride, train,
                                   self.dtype))


def _shortcut(x: jax.Array, features: int, stride: int, train: bool, dtype: Any) -> jax.Array:
  """Identity, or a strided 1x1 conv + BatchNorm when the shape changes.

  Called inside a block's compact `__call__`, so the layers belong to that block.
  """
  if stride == 1 and x.shape[-1] == features:
    return x
  x = _conv(features, 1, stride, dtype, "downsample_conv")(x)
  return _batchnorm(train, dtype, "downsample_bn")(x)


def _head_init(fan_in: int) -> Callable:
  """PyTorch's nn.Linear default for weight and bias: uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / fan_in ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class ResNet(nn.Module):
  """A ResNet classifier: stem, four residual stages, average pooling, dense head.

  `train` normalises with batch statistics and updates the running ones (collection
  'batch_stats'); otherwise the running averages are used.
  """
  block: type[nn.Module]
  stage_sizes: Sequence[int]
  num_classes: int
  stem: str = "imagenet"
  width: int = 64  # stem channels; stage i has width * 2**i (times the block expansion)
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = _conv(self.width, 7, 2, self.dtype, "conv1")(x)
      x = nn.relu(_batchnorm(train, self.dtype, "bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == "cifar":
      x = _conv(self.width, 3, 1, self.dtype, "conv1")(x)
      x = nn.relu(_batchnorm(train, self.dtype, "bn1")(x))
    else:
      raise ValueError(f"stem={self.stem!r} is unknown; choose one of {', '.join(STEMS)}")
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        x = self.block(self.width * 2 ** stage, stride=stride,
                       zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                       name=f"layer{stage + 1}_{index}")(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    head_init = _head_init(x.shape[-1])
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=head_init, bias_init=head_init, name="fc")(x)
    return jnp.asarray(x, jnp.float32)


def resnet(depth: int, num_classes: int, stem: str = "imagenet", *, width: int = 64,
           zero_init_residual: bool = False, dtype: Any = jnp.float32) -> ResNet:
  """ResNet-`depth` (18, 34, 50, 101 or 152) with the 'imagenet' or 'cifar' stem."""
  if depth not in DEPTHS:
    raise ValueError(f"depth={depth!r} is not a ResNet depth; choose one of "
                     f"{', '.join(map(str, DEPTHS))}")
  if stem not in STEMS:
    raise ValueError(f"stem={stem!r} is unknown; choose one of {', '.join(STEMS)}")
  kind, stage_sizes = DEPTHS[depth]
  block = BasicBlock if kind == "basic" else Bottleneck
  return ResNet(block=block, stage_sizes=stage_sizes, num_classes=num_classes, stem=stem,
                width=width, zero_init_residual=zero_init_residual, dtype=dtype)


resnet18 = functools.partial(resnet, 18)
resnet34 = functools.partial(resnet, 34)
resnet50 = functools.partial(resnet, 50)
resnet101 = functools.partial(resnet, 101)
resnet152 = functools.partial(resnet, 152)
