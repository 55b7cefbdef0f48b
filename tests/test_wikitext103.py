"""The WikiText-103 builder, prepared offline from a small corpus in the official layout,
and Transformer-XL's ordered batching over the token streams it stores."""

import collections
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from invmeasure.data import lm, wikitext103
from invmeasure.training.errors import ConfigError

FILES = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens",
         "test": "wiki.test.tokens"}
COMMON = ["the", ",", ".", "of", "<unk>", "and", "in", "@-@", "a", "to", "was", "@,@",
          "Valkyria", "Senjō", "game", "1", "=", "is"]
CHUNK = 97  # small and odd, so streams span many chunks and windows cross their edges


def article(rng, rare):
  """Lines shaped like the real files': blank lines, ` = Heading = `, text with a lead space."""
  lines = [" \n", f" = {rng.choice(COMMON[12:15])} {rng.choice(rare)} = \n", " \n"]
  for _ in range(rng.integers(2, 6)):
    words = [rng.choice(COMMON) if rng.random() < 0.8 else rng.choice(rare)
             for _ in range(rng.integers(3, 25))]
    lines.append(" " + " ".join(words) + " \n")
    if rng.random() < 0.3:
      lines += [" \n", " = = Section = = \n", " \n"]
  return lines


def corpus_texts(seed=0):
  rng = np.random.default_rng(seed)
  rare = [f"w{i}" for i in range(60)]
  train = [line for _ in range(70) for line in article(rng, rare)]
  held_out = {split: [line for _ in range(12) for line in article(rng, rare)]
              for split in ("validation", "test")}
  return {"train": "".join(train), **{s: "".join(lines) for s, lines in held_out.items()}}


def expected_vocab(train_text):
  """<eos>, then tokens by count (descending), ties by first position in the text."""
  counts, first = collections.Counter(), {}
  for position, token in enumerate(train_text.split()):
    counts[token] += 1
    first.setdefault(token, position)
  return ["<eos>"] + sorted(counts, key=lambda t: (-counts[t], first[t]))


def expected_tokens(text):
  return [t for line in text.split("\n")[:-1] for t in line.split() + ["<eos>"]]


@pytest.fixture(scope="module")
def texts():
  return corpus_texts()


@pytest.fixture(scope="module")
def manual_dirs(texts, tmp_path_factory):
  """The same corpus as the `wikitext-103/` directory and as `wikitext-103-v1.zip`."""
  directory = tmp_path_factory.mktemp("manual_dir")
  (directory / "wikitext-103").mkdir()
  archive = tmp_path_factory.mktemp("manual_zip")
  with zipfile.ZipFile(archive / "wikitext-103-v1.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for split, name in FILES.items():
      (directory / "wikitext-103" / name).write_text(texts[split], encoding="utf-8")
      z.writestr(f"wikitext-103/{name}", texts[split].encode("utf-8"))
  return {"directory": str(directory), "zip": str(archive)}


@pytest.fixture(scope="module", params=["directory", "zip"])
def prepared(request, manual_dirs, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp(f"tfds_{request.param}"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(wikitext103, "CHUNK_LENGTH", CHUNK)
    builder = wikitext103.prepare(manual_dirs[request.param], data_dir)
  return builder, data_dir


def test_vocabulary_is_eos_then_training_tokens_by_frequency(prepared, texts):
  builder, _ = prepared
  vocab = wikitext103.load_vocab(builder)
  assert list(vocab) == expected_vocab(texts["train"])
  assert vocab[0] == "<eos>" and "<unk>" in vocab and "Senjō" in vocab
  assert builder.info.metadata["vocab_size"] == len(vocab)
  assert builder.info.metadata["chunk_length"] == CHUNK


@pytest.mark.parametrize("split", list(FILES))
def test_each_split_is_its_file_tokens_with_eos_after_every_line(prepared, texts, split):
  builder, data_dir = prepared
  stream = lm.TokenStream.from_tfds(split, data_dir)
  tokens = expected_tokens(texts[split])
  index = {t: i for i, t in enumerate(expected_vocab(texts["train"]))}
  assert len(stream) == len(tokens) == builder.info.metadata["num_tokens"][split]
  assert builder.info.splits[split].num_examples == math.ceil(len(tokens) / CHUNK) > 3
  ids = stream.windows(np.array([0]), len(stream))[0]
  np.testing.assert_array_equal(ids, [index[t] for t in tokens])
  vocab = wikitext103.load_vocab(builder)
  assert [vocab[i] for i in ids] == tokens


def test_tfds_stream_windows_match_memory_across_chunk_edges(prepared, seed):
  _, data_dir = prepared
  stream = lm.TokenStream.from_tfds("train", data_dir)
  ids = stream.windows(np.array([0]), len(stream))[0]
  memory = lm.TokenStream.from_array(ids, chunk_length=13)
  rng = np.random.default_rng(seed)
  for length in (1, CHUNK - 1, CHUNK + 1, 3 * CHUNK):
    starts = rng.integers(0, len(ids) - length + 1, size=7)
    expected = np.stack([ids[s:s + length] for s in starts])
    np.testing.assert_array_equal(stream.windows(starts, length), expected)
    np.testing.assert_array_equal(memory.windows(starts, length), expected)
  with pytest.raises(IndexError):
    stream.windows(np.array([len(ids) - 2]), 3)


def test_prepare_command_line(manual_dirs, tmp_path):
  """`python -m invmeasure.data.wikitext103` (the path that works without TensorFlow)."""
  data_dir = str(tmp_path / "tfds")
  result = subprocess.run(
      [sys.executable, "-m", "invmeasure.data.wikitext103",
       f"--manual_dir={manual_dirs['directory']}",
       f"--data_dir={data_dir}"], capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Prepared" in result.stdout
  assert len(lm.TokenStream.from_tfds("test", data_dir)) > 0


def test_missing_manual_dir_is_a_one_line_error_naming_it_and_the_build_command(tmp_path):
  data_dir = tmp_path / "tfds"
  for manual_dir in (tmp_path / "missing", tmp_path / "other"):
    if manual_dir.name == "other":
      manual_dir.mkdir()
      (manual_dir / "wiki.train.raw").write_text("raw, not tokens\n")
    with pytest.raises(ConfigError) as error:
      wikitext103.prepare(str(manual_dir), str(data_dir))
    message = str(error.value)
    assert "\n" not in message
    assert str(manual_dir) in message and "wikitext-103" in message
    assert "tfds build wikitext103" in message and f"--manual_dir={manual_dir}" in message
    assert not (data_dir / "wikitext103" / "1.0.0").exists()


def test_unprepared_stream_is_a_one_line_config_error(tmp_path):
  with pytest.raises(ConfigError) as error:
    lm.TokenStream.from_tfds("train", str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and "wikitext103" in message and "tfds build" in message


def test_held_out_tokens_missing_from_training_become_unk():
  vocab = ("<eos>", "a", "<unk>")
  assert list(wikitext103.encode_lines([" a b \n", "\n"], vocab)) == [[1, 2, 0], [0]]
  with pytest.raises(ValueError, match="'b'"):
    list(wikitext103.encode_lines(["a b\n"], ("<eos>", "a")))


# Batching, checked against the stream laid out as rows independently of the library.


def rows_of(ids, batch_size):
  row_length = len(ids) // batch_size
  return ids[:batch_size * row_length].reshape(batch_size, row_length)


@pytest.mark.parametrize("batch_size,tgt_len", [(4, 16), (6, 7), (1, 50)])
def test_training_steps_continue_each_row_and_wrap_each_epoch(batch_size, tgt_len, seed):
  ids = np.random.default_rng(seed).integers(0, 1000, size=1237).astype(np.int32)
  stream = lm.TokenStream.from_array(ids, chunk_length=29)
  segments = lm.train_segments(len(ids), batch_size, tgt_len, mem_len=2 * tgt_len)
  rows = rows_of(ids, batch_size)
  assert segments.num_steps == (rows.shape[1] - 1) // tgt_len
  previous = None
  for t in range(segments.num_steps):
    batch = lm.segment_batch(stream, segments, t)
    assert set(batch) == {"inputs", "targets"}
    np.testing.assert_array_equal(batch["inputs"], rows[:, t * tgt_len:(t + 1) * tgt_len])
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    np.testing.assert_array_equal(batch["targets"][:, -1], rows[:, (t + 1) * tgt_len])
    if previous is not None:  # row b resumes right where it stopped
      np.testing.assert_array_equal(batch["inputs"][:, 0], previous["targets"][:, -1])
    assert segments.memory_length(t) == min(2 * tgt_len, t * tgt_len)
    previous = batch
  again = lm.segment_batch(stream, segments, segments.num_steps + 1)
  np.testing.assert_array_equal(again["inputs"], lm.segment_batch(stream, segments, 1)["inputs"])
  assert segments.memory_length(segments.num_steps) == 0


def test_process_rows_concatenate_to_the_global_batch(seed):
  ids = np.random.default_rng(seed).integers(0, 50, size=3001).astype(np.int32)
  stream = lm.TokenStream.from_array(ids, chunk_length=64)
  for segments in (lm.train_segments(len(ids), 8, 20), lm.eval_segments(len(ids), 8, 33)):
    for step in (0, 3, segments.num_steps - 1):
      whole = lm.segment_batch(stream, segments, step)
      for count in (2, 4, 8):
        parts = [lm.segment_batch(stream, segments, step, p, count) for p in range(count)]
        for name, value in whole.items():
          np.testing.assert_array_equal(np.concatenate([part[name] for part in parts]), value)
  assert lm.process_rows(8, 1, 4) == range(2, 4)
  with pytest.raises(ValueError, match="does not split"):
    lm.process_rows(8, 0, 3)


def test_evaluation_predicts_every_row_token_once_with_a_masked_last_segment(seed):
  ids = np.random.default_rng(seed).integers(0, 50, size=1000).astype(np.int32)
  stream = lm.TokenStream.from_array(ids, chunk_length=50)
  segments = lm.eval_segments(len(ids), 3, 64, mem_len=100)
  rows = rows_of(ids, 3)  # 333 tokens a row: 332 targets, 5 full segments and one of 12
  assert segments.num_steps == 6 and segments.num_targets(5) == 12
  batches = [lm.segment_batch(stream, segments, t) for t in range(segments.num_steps)]
  masks = np.concatenate([b["mask"] for b in batches], axis=1).astype(bool)
  targets = np.concatenate([b["targets"] for b in batches], axis=1)
  inputs = np.concatenate([b["inputs"] for b in batches], axis=1)
  assert masks.sum() == 3 * 332 and masks[:, :332].all()
  np.testing.assert_array_equal(targets[:, :332], rows[:, 1:])
  np.testing.assert_array_equal(inputs[:, :332], rows[:, :-1])
  assert (targets[~masks] == 0).all() and (inputs[~masks] == 0).all()
  assert [segments.memory_length(t) for t in range(6)] == [0, 64, 100, 100, 100, 100]
  with pytest.raises(IndexError):
    lm.segment_batch(stream, segments, 6)


def test_training_needs_one_full_segment():
  assert lm.train_segments(40, 4, 9).num_steps == 1  # rows of 10 tokens: 9 targets
  with pytest.raises(ValueError, match="no segment"):
    lm.train_segments(40, 4, 10)
  assert lm.eval_segments(40, 4, 10).num_steps == 1
