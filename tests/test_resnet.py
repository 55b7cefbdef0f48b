"""ResNet: parameter counts of the reference architectures, shapes, BatchNorm statistics,
zero-init residuals, bfloat16 compute and the registry entry.

Big models are only traced (`jax.eval_shape`); real computation uses ResNet-18 with the
CIFAR stem at width 8 on a batch of two 8x8 images.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from invmeasure.models import losses, registry, resnet
from invmeasure.training.errors import ConfigError


def abstract_variables(model, size=32):
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), image)


def num_params(model) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_variables(model)["params"]))


# torchvision's counts: conv and dense weights, dense bias, BatchNorm scale and bias.
@pytest.mark.parametrize("depth, num_classes, stem, expected", [
    (18, 10, "cifar", 11_173_962),
    (18, 1000, "imagenet", 11_689_512),
    (34, 1000, "imagenet", 21_797_672),
    (50, 1000, "imagenet", 25_557_032),
    (101, 1000, "imagenet", 44_549_160),
    (152, 1000, "imagenet", 60_192_808),
])
def test_parameter_count_matches_reference(depth, num_classes, stem, expected):
  assert num_params(resnet.resnet(depth, num_classes, stem)) == expected


@pytest.mark.parametrize("depth, stem, size, final", [
    (18, "imagenet", 224, (7, 7, 512)),
    (50, "imagenet", 224, (7, 7, 2048)),
    (18, "cifar", 32, (4, 4, 512)),
    (50, "cifar", 32, (4, 4, 2048)),
])
def test_output_and_last_feature_map_shapes(depth, stem, size, final):
  model = resnet.resnet(depth, 7, stem)
  variables = abstract_variables(model, size)
  images = jax.ShapeDtypeStruct((3, size, size, 3), jnp.float32)
  logits, captured = jax.eval_shape(
      lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
      variables, images)
  assert logits.shape == (3, 7)
  blocks = captured["intermediates"]
  last = sorted(k for k in blocks if k.startswith("layer4_"))[-1]
  assert blocks[last]["__call__"][0].shape == (3, *final)


def test_depth_and_stem_are_checked():
  with pytest.raises(ValueError, match="depth=20"):
    resnet.resnet(20, 10)
  with pytest.raises(ValueError, match="stem='tiny'"):
    resnet.resnet(18, 10, "tiny")


@pytest.fixture(scope="module")
def tiny():
  """Zero-init ResNet-18 (CIFAR stem, width 8), its variables and two 8x8 images."""
  model = resnet.resnet(18, 10, "cifar", width=8, zero_init_residual=True)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  variables = jax.jit(lambda key: model.init(key, images))(jax.random.key(0))
  return model, variables, images


def test_zero_init_residual_zeroes_each_blocks_last_batchnorm_scale(tiny):
  _, variables, _ = tiny
  blocks = {k: v for k, v in variables["params"].items() if k.startswith("layer")}
  assert len(blocks) == 8
  for name, block in blocks.items():
    assert not np.any(block["bn2"]["scale"]), name
    np.testing.assert_array_equal(block["bn1"]["scale"], 1.0)
    if "downsample_bn" in block:
      np.testing.assert_array_equal(block["downsample_bn"]["scale"], 1.0)
  np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], 1.0)


@pytest.mark.parametrize("block, features", [(resnet.BasicBlock, 8), (resnet.Bottleneck, 2)])
def test_zero_init_block_is_identity_on_its_residual_branch(block, features):
  x = jax.nn.relu(jax.random.normal(jax.random.key(2), (2, 4, 4, 8)))
  for zero in (True, False):
    module = block(features, zero_init_residual=zero)
    variables = module.init(jax.random.key(3), x)
    last = "bn2" if block is resnet.BasicBlock else "bn3"
    np.testing.assert_array_equal(variables["params"][last]["scale"], 0.0 if zero else 1.0)
    out = module.apply(variables, x)
    # The input is non-negative and the shapes agree, so relu(x + 0) == x.
    assert np.allclose(out, x, atol=1e-6) == zero


def test_projection_shortcut_only_when_shape_changes():
  x = jnp.zeros((1, 8, 8, 16))
  same = resnet.BasicBlock(16).init(jax.random.key(0), x)["params"]
  strided = resnet.BasicBlock(16, stride=2).init(jax.random.key(0), x)["params"]
  wider = resnet.Bottleneck(16).init(jax.random.key(0), x)["params"]
  assert "downsample_conv" not in same
  assert strided["downsample_conv"]["kernel"].shape == (1, 1, 16, 16)
  assert wider["downsample_conv"]["kernel"].shape == (1, 1, 16, 64)
  assert "bias" not in strided["conv1"] and "bias" not in wider["downsample_conv"]


def test_initialisation_matches_torchvision():
  block = resnet.BasicBlock(64).init(jax.random.key(4), jnp.zeros((1, 4, 4, 64)))["params"]
  kernel = np.asarray(block["conv2"]["kernel"])
  np.testing.assert_allclose(kernel.std(), math.sqrt(2.0 / (3 * 3 * 64)), rtol=0.03)
  assert np.abs(kernel).max() > 3.5 * kernel.std()  # untruncated normal
  fc = abstract_variables(resnet.resnet(18, 10, "cifar"))["params"]["fc"]
  assert fc["kernel"].shape == (512, 10) and fc["bias"].shape == (10,)


def test_head_is_uniform_within_one_over_sqrt_fan_in(tiny):
  _, variables, _ = tiny
  fc = variables["params"]["fc"]
  bound = 1.0 / math.sqrt(fc["kernel"].shape[0])
  for leaf in (fc["kernel"], fc["bias"]):
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.5 * bound


def test_train_mode_updates_running_statistics_and_eval_mode_uses_them(tiny):
  model, variables, images = tiny
  logits, updated = jax.jit(lambda v, x: model.apply(
      v, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"])
      )(variables, images)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  stem_out = updated["intermediates"]["conv1"]["__call__"][0]
  stats = updated["batch_stats"]["bn1"]
  # Running average with momentum 0.9 from mean 0 and variance 1.
  np.testing.assert_allclose(stats["mean"], 0.1 * stem_out.mean(axis=(0, 1, 2)), atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * stem_out.var(axis=(0, 1, 2)),
                             rtol=1e-5)
  assert jax.tree.structure(updated["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])

  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  before = evaluate(variables, images)
  after = evaluate({"params": variables["params"], "batch_stats": updated["batch_stats"]},
                   images)
  assert not np.allclose(before, after)
  # Running statistics make each example's logits independent of the rest of the batch.
  np.testing.assert_allclose(evaluate(variables, images[:1]), before[:1], rtol=1e-5,
                             atol=1e-6)
  train_alone = model.apply(variables, images[:1], train=True, mutable=["batch_stats"])[0]
  assert not np.allclose(train_alone, logits[:1])


def test_backward_pass_reaches_every_parameter(tiny):
  model, variables, images = tiny
  state = {"batch_stats": variables["batch_stats"]}
  loss_fn = losses.linen_loss_fn(model, state, train=True)
  batch = {"image": images, "label": jnp.array([3, 7])}
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"], batch)
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # With zero-init residuals the convs inside a branch get no gradient at step 0, but the
  # zeroed scale does, so training can move it.
  assert not np.any(grads["layer1_0"]["conv1"]["kernel"])
  assert np.abs(grads["layer1_0"]["bn2"]["scale"]).max() > 0
  assert np.abs(grads["conv1"]["kernel"]).max() > 0 and np.abs(grads["fc"]["kernel"]).max() > 0


def test_bfloat16_compute_keeps_float32_parameters_and_statistics():
  model = resnet.resnet(50, 10, "imagenet", dtype=jnp.bfloat16)
  variables = abstract_variables(model, 64)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, updated = jax.eval_shape(lambda v, x: model.apply(
      v, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"]),
      variables, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  activations = {k: v["__call__"][0].dtype for k, v in updated["intermediates"].items()
                 if k != "__call__"}
  assert set(activations.values()) == {jnp.dtype(jnp.bfloat16)}, activations
  assert logits.dtype == jnp.float32  # the loss is computed in float32
  assert {x.dtype for x in jax.tree.leaves(updated["batch_stats"])} == {
      jnp.dtype(jnp.float32)}


def model_config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"name": "resnet", "depth": 18, "stem": "cifar",
                                    "zero_init_residual": False, "dtype": "float32",
                                    **fields})


def test_registry_builds_resnet_from_config():
  model = registry.make_model(model_config(depth=34, stem="imagenet", dtype="bfloat16",
                                           zero_init_residual=True), num_classes=100)
  assert isinstance(model, resnet.ResNet)
  assert (model.block, tuple(model.stage_sizes)) == (resnet.BasicBlock, (3, 4, 6, 3))
  assert (model.num_classes, model.stem, model.width) == (100, "imagenet", 64)
  assert model.dtype == jnp.bfloat16 and model.zero_init_residual
  assert num_params(registry.make_model(model_config(), 10)) == 11_173_962


@pytest.mark.parametrize("field, value", [("depth", 20), ("stem", "tiny"),
                                          ("dtype", "float16")])
def test_registry_rejects_bad_resnet_fields_with_one_line(field, value):
  with pytest.raises(ConfigError, match=rf"^config\.model\.{field}=") as error:
    registry.make_model(model_config(**{field: value}), 10)
  assert "\n" not in str(error.value)
