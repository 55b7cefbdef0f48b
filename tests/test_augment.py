"""The quickstart twin's augmentation, and diagnostic rounds that measure the augmented
objective: fresh, deterministic draws from (seed, step), independent of batch and device."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_interpolation, quickstart
from invmeasure.data import augment
from invmeasure.studies import restore
from invmeasure.training import config_checks, loop, step as step_lib
from invmeasure.training.errors import ConfigError


def _images(seed, n=16, size=8):
  return np.random.default_rng(seed).integers(1, 256, (n, size, size, 1)).astype(np.uint8)


def test_random_shift_moves_each_image_within_the_range_and_fills_zeros(seed):
  images = _images(seed, n=64)
  shifted = np.asarray(augment.random_shift(jax.random.key(seed), jnp.asarray(images), 1))
  seen = set()
  for original, moved in zip(images, shifted):
    matches = []
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        padded = np.pad(original, ((1, 1), (1, 1), (0, 0)))
        if np.array_equal(padded[1 - dy:9 - dy, 1 - dx:9 - dx], moved):
          matches.append((dy, dx))
    assert len(matches) == 1, "each image is its original moved by one (dy, dx)"
    seen.add(matches[0])
  assert len(seen) == 9, "all nine shifts occur among 64 images"


def test_per_example_augmentation_does_not_depend_on_the_batch(seed):
  images = jnp.asarray(_images(seed, n=8))
  keys = jax.random.split(jax.random.key(seed), 8)
  fn = lambda k, x: augment.random_shift(k, x, 1)  # noqa: E731
  together = augment.per_example(fn, keys, images)
  alone = augment.per_example(fn, keys[3:5], images[3:5])
  np.testing.assert_array_equal(together[3:5], alone)
  np.testing.assert_array_equal(together[2], fn(keys[2], images[2:3])[0])


def test_shift_noise_adds_gaussian_noise_of_the_configured_std(seed):
  plan = loop.make_plan(quickstart.get_config("tiny"))
  task = plan.task
  assert task.augmentation == "shift_noise" and task.augmentation_noise_std == 1.0
  images = jnp.zeros((256, 8, 8, 1), jnp.uint8)  # shifting zeros changes nothing
  out = np.asarray(task.preprocess(images, jax.random.key(seed)))
  clean = np.asarray(task.preprocess(images, None))
  noise = (out - clean).ravel()
  # Five standard errors (1/sqrt(n) for the mean, 1/sqrt(2n) for the std): a fresh seed
  # fails by chance once in a million runs; 0.02 for both failed one run in ~100.
  n = noise.size
  assert abs(noise.mean()) < 5 / np.sqrt(n) and abs(noise.std() - 1.0) < 5 / np.sqrt(2 * n)


def _round_batch(task, step, k=2, batch_size=16):
  """The k-th minibatch of the round after `step` steps, as the host gives it."""
  return task.diagnostic_batches(step, k + 1, batch_size)[k]


def test_round_minibatches_are_augmented_as_training_batches_freshly_per_step():
  config = quickstart.get_config("tiny")
  plan = loop.make_plan(config)
  task = plan.task
  state = loop.init_state_fn(plan)(loop.init_key(config))
  minibatch = _round_batch(task, 4)
  # Each example's place in the round keys its augmentation.
  np.testing.assert_array_equal(minibatch["augment_index"], 2 * 16 + np.arange(16))
  _, batch = task.diagnostic_loss(state, minibatch)
  # Recomputed by hand from (seed + 2, step) and the example's place.
  base = step_lib.step_key(config.seed + 2, state.step)
  for i in (0, 7):
    key = jax.random.fold_in(base, minibatch["augment_index"][i])
    expected = task.preprocess(jnp.asarray(minibatch["image"][i:i + 1]), key)[0]
    np.testing.assert_allclose(batch["image"][i], expected, rtol=1e-6, atol=1e-6)
  # Deterministic: the same state gives the same images; another step other ones.
  _, again = task.diagnostic_loss(state, minibatch)
  np.testing.assert_array_equal(batch["image"], again["image"])
  later = state._replace(step=state.step + 1)
  _, other = task.diagnostic_loss(later, minibatch)
  assert np.abs(np.asarray(batch["image"]) - np.asarray(other["image"])).mean() > 0.5
  # Not the un-augmented images: the noise alone differs from them by std 1.
  clean = task.preprocess(jnp.asarray(minibatch["image"]), None)
  assert float(jnp.std(batch["image"] - clean)) > 0.9


def test_augment_none_rounds_measure_un_augmented_images():
  config = quickstart.get_config("tiny")
  config.diagnostics.augment = "none"
  plan = loop.make_plan(config)
  state = loop.init_state_fn(plan)(loop.init_key(config))
  minibatch = _round_batch(plan.task, 4)
  assert "augment_index" not in minibatch
  _, batch = plan.task.diagnostic_loss(state, minibatch)
  np.testing.assert_array_equal(batch["image"],
                                plan.task.preprocess(jnp.asarray(minibatch["image"]), None))
  # An un-augmented config's rounds carry no augmentation either, whatever the choice.
  plain = loop.make_plan(digits_interpolation.get_config("tiny"))
  assert "augment_index" not in _round_batch(plain.task, 4)


def test_training_set_of_an_augmented_task_is_fixed_augmented_copies():
  plan = loop.make_plan(quickstart.get_config("tiny"))
  examples = restore.training_set(plan.task, augmentation_draws=3)
  n = 1500
  assert examples["image"].shape[0] == 3 * n
  np.testing.assert_array_equal(examples["image"][:n], examples["image"][2 * n:])
  np.testing.assert_array_equal(examples["augment_index"], np.arange(3 * n))
  plain = loop.make_plan(digits_interpolation.get_config("tiny"))
  assert set(restore.training_set(plain.task)) == {"image", "label"}


def test_config_json_records_the_round_augmentation(tmp_path):
  config = quickstart.get_config("tiny")
  config.num_train_steps = 2
  loop.train_and_evaluate(config, str(tmp_path))
  written = json.load(open(os.path.join(tmp_path, "config.json")))
  assert written["diagnostics"]["augment"] == "train"
  assert written["augmentation"] == "shift_noise"


@pytest.mark.parametrize("field,value,expected", [
    ("augmentation", "rotate", "config.augmentation='rotate' is unknown"),
    ("augmentation_shift", -1, "config.augmentation_shift=-1 must be an integer >= 0"),
    ("augmentation_noise_std", -0.5, "config.augmentation_noise_std=-0.5 must be a number"),
    ("diagnostics.augment", "test", "config.diagnostics.augment='test' is unknown"),
])
def test_bad_augmentation_fields_are_one_line_errors(field, value, expected):
  config = quickstart.get_config("tiny")
  *parent, leaf = field.split(".")
  node = config[parent[0]] if parent else config
  node[leaf] = value
  with pytest.raises(ConfigError, match=expected) as info:
    config_checks.check_config(config, 8)
  assert "\n" not in str(info.value)


def test_language_model_rounds_take_no_augmentation():
  from configs import wt103_transformerxl
  config = wt103_transformerxl.get_config("tiny")
  assert config.diagnostics.augment == "none"
  config_checks.check_config(config, 4)
  config.diagnostics.augment = "train"
  with pytest.raises(ConfigError, match="does not apply to a language model"):
    config_checks.check_config(config, 4)
