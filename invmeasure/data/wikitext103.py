r"""WikiText-103 (word level) as a TFDS data set of token ids, for Transformer-XL.

The vocabulary and the ids are those of the original Transformer-XL code for `wt103`:
each line is split on whitespace and ends with an `<eos>` token; `<eos>` is id 0 and every
other token of the training split follows by decreasing count, ties in order of first
appearance (`<unk>` is an ordinary token of the data). Each split is stored as its token
stream cut into examples of `chunk_length` consecutive ids (the last one shorter), in
order: example i holds tokens [i * chunk_length, (i + 1) * chunk_length). The metadata
holds `chunk_length`, `vocab_size` and `num_tokens` per split; the vocabulary is
`vocab.txt` (one token a line, line i is id i) in the data set's directory.

Preparing needs no TensorFlow (ArrayRecord files):

    python -m invmeasure.data.wikitext103 --manual_dir=DIR [--data_dir=TFDS_DATA_DIR]

With TensorFlow installed (the `tfds` command line imports it) the same is
`tfds build wikitext103 --imports=invmeasure.data.wikitext103 --manual_dir=DIR`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import os
import sys
import zipfile
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from invmeasure.errors import ConfigError

EOS = "<eos>"
UNK = "<unk>"
CHUNK_LENGTH = 4096
VOCAB_FILE = "vocab.txt"
DIRECTORY = "wikitext-103"
ARCHIVE = "wikitext-103-v1.zip"
SPLIT_FILES = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens",
               "test": "wiki.test.tokens"}
# The sizes of the official corpus, for planning a run (e.g. a dry run) without its data:
# the vocabulary as built here (Transformer-XL's `n_token` for wt103) and the training
# stream's length, one `<eos>` per line included (the published count).
VOCAB_SIZE = 267_735
NUM_TRAIN_TOKENS = 103_227_021

_INSTRUCTIONS = f"""\
Put the official word-level WikiText-103 in the manual dir, either the `{DIRECTORY}`
directory holding {', '.join(SPLIT_FILES.values())}, or the `{ARCHIVE}` archive it comes
in (not the `-raw` variant).
"""


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Where the three token files are: plain files, or members of a zip archive."""
  paths: dict[str, str]  # split -> file path, or member name inside `archive`
  archive: str | None = None


def build_command(manual_dir: str, data_dir: str | None = None) -> str:
  """The commands that prepare the data set from `manual_dir`, as one line."""
  data = f" --data_dir={data_dir}" if data_dir else ""
  return (f"`tfds build wikitext103 --imports=invmeasure.data.wikitext103 "
          f"--manual_dir={manual_dir}{data} --file_format=array_record` (or, without "
          f"TensorFlow, `python -m invmeasure.data.wikitext103 --manual_dir={manual_dir}{data}`)")


def missing_corpus_error(manual_dir: str, data_dir: str | None = None) -> ConfigError:
  return ConfigError(
      f"WikiText-103 is not in the manual dir {manual_dir}: put the word-level `{DIRECTORY}` "
      f"directory ({', '.join(SPLIT_FILES.values())}) or `{ARCHIVE}` there, then run "
      + build_command(manual_dir, data_dir))


def _archive_member(names: Sequence[str], filename: str) -> str | None:
  """The archive member that is `filename`, preferably inside `wikitext-103/`."""
  candidates = [n for n in names if (n == filename or n.endswith("/" + filename))
                and not n.startswith("__MACOSX/")]
  candidates.sort(key=lambda n: (not n.endswith(f"{DIRECTORY}/{filename}"), len(n)))
  return candidates[0] if candidates else None


def find_corpus(manual_dir: epath.PathLike) -> Corpus | None:
  """The corpus in `manual_dir` (its `wikitext-103/`, itself, or the zip), or None."""
  root = epath.Path(manual_dir)
  for directory in (root / DIRECTORY, root):
    paths = {split: directory / name for split, name in SPLIT_FILES.items()}
    if all(path.is_file() for path in paths.values()):
      return Corpus({split: os.fspath(path) for split, path in paths.items()})
  archive = root / ARCHIVE
  if archive.is_file():
    with archive.open("rb") as f, zipfile.ZipFile(f) as z:
      names = z.namelist()
    members = {split: _archive_member(names, name) for split, name in SPLIT_FILES.items()}
    if all(members.values()):
      return Corpus(members, archive=os.fspath(archive))
  return None


def split_lines(corpus: Corpus, split: str) -> Iterator[str]:
  """The lines of a split's file, as Python's text mode reads them (universal newlines)."""
  if corpus.archive is None:
    with epath.Path(corpus.paths[split]).open("r", encoding="utf-8") as f:
      yield from f
  else:
    with epath.Path(corpus.archive).open("rb") as f, zipfile.ZipFile(f) as z:
      with z.open(corpus.paths[split]) as member:
        yield from io.TextIOWrapper(member, encoding="utf-8")


def count_tokens(lines: Iterable[str]) -> tuple[collections.Counter[str], int]:
  """Counts of the whitespace-separated tokens, and the stream length with `<eos>`s."""
  counter: collections.Counter[str] = collections.Counter()
  total = 0
  for line in lines:
    tokens = line.split()
    counter.update(tokens)
    total += len(tokens) + 1
  return counter, total


def build_vocab(counter: collections.Counter[str]) -> tuple[str, ...]:
  """`<eos>`, then the tokens by decreasing count, ties by first appearance.

  `Counter.most_common` sorts stably and a Counter keeps insertion order, so ties stay in
  the order the tokens first appear, which is what Transformer-XL's vocabulary gets.
  """
  return (EOS,) + tuple(token for token, _ in counter.most_common() if token != EOS)


def encode_lines(lines: Iterable[str], vocab: Sequence[str]) -> Iterator[list[int]]:
  """Each line's ids followed by `<eos>`'s; unknown tokens become `<unk>` if it exists."""
  index = {token: i for i, token in enumerate(vocab)}
  unknown = index.get(UNK)
  eos = index[EOS]
  for line in lines:
    tokens = line.split()
    if unknown is None:
      missing = [t for t in tokens if t not in index]
      if missing:
        raise ValueError(f"token {missing[0]!r} is not in the vocabulary, which has no {UNK}")
      yield [index[t] for t in tokens] + [eos]
    else:
      yield [index.get(t, unknown) for t in tokens] + [eos]


def chunk_ids(line_ids: Iterable[list[int]], chunk_length: int) -> Iterator[np.ndarray]:
  """The concatenated ids in int32 arrays of `chunk_length` (the last may be shorter)."""
  buffer: list[int] = []
  for ids in line_ids:
    buffer.extend(ids)
    while len(buffer) >= chunk_length:
      yield np.asarray(buffer[:chunk_length], dtype=np.int32)
      del buffer[:chunk_length]
  if buffer:
    yield np.asarray(buffer, dtype=np.int32)


def write_vocab(path: epath.PathLike, vocab: Sequence[str]) -> None:
  epath.Path(path).write_text("".join(token + "\n" for token in vocab), encoding="utf-8")


def read_vocab(path: epath.PathLike) -> tuple[str, ...]:
  # Split on "\n" only: str.splitlines would also break at characters such as U+2028.
  return tuple(epath.Path(path).read_text(encoding="utf-8").split("\n")[:-1])


class Wikitext103(tfds.core.GeneratorBasedBuilder):
  """WikiText-103 (word level) as int32 token ids in chunks of consecutive tokens."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Token ids with Transformer-XL's wt103 vocabulary, in chunks."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def __init__(self, *, file_format: str | None = None, **kwargs):
    # Random access (tfds.data_source) needs ArrayRecord; `tfds build` defaults to TFRecord.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10 derives it via the `importlib_resources` backport, which it does not install.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("WikiText-103, word level: the token stream of each split (each line "
                     "followed by <eos>) as int32 ids in examples of consecutive tokens."),
        features=tfds.features.FeaturesDict(
            {"ids": tfds.features.Tensor(shape=(None,), dtype=np.int32)}),
        homepage="https://arxiv.org/abs/1609.07843",
        citation=("@article{merity2016pointer, title={Pointer Sentinel Mixture Models}, "
                  "author={Merity, Stephen and Xiong, Caiming and Bradbury, James and "
                  "Socher, Richard}, journal={arXiv preprint arXiv:1609.07843}, year={2016}}"),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # example i must hold the i-th chunk of the stream
    )

  def _manual_corpus(self, dl_manager: tfds.download.DownloadManager) -> Corpus:
    """The corpus in the manual dir, or a one-line ConfigError naming that dir."""
    # tfds raises a multi-line AssertionError for a missing or empty manual dir.
    manual_dir = getattr(dl_manager, "_manual_dir", None)
    try:
      corpus = find_corpus(dl_manager.manual_dir)
    except AssertionError:
      corpus = None
    if corpus is None:
      raise missing_corpus_error(os.fspath(manual_dir or "<data_dir>/downloads/manual"),
                                 os.fspath(self.data_dir_root))
    return corpus

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    corpus = self._manual_corpus(dl_manager)
    counter, train_tokens = count_tokens(split_lines(corpus, "train"))
    vocab = build_vocab(counter)
    write_vocab(self.data_path / VOCAB_FILE, vocab)
    num_tokens = {split: train_tokens if split == "train"
                  else count_tokens(split_lines(corpus, split))[1] for split in SPLIT_FILES}
    self.info.metadata.update(
        {"chunk_length": CHUNK_LENGTH, "vocab_size": len(vocab), "num_tokens": num_tokens})
    return {split: self._generate_examples(corpus, split, vocab, num_tokens[split])
            for split in SPLIT_FILES}

  def _generate_examples(self, corpus: Corpus, split: str, vocab: Sequence[str],
                         num_tokens: int):
    written = 0
    chunks = chunk_ids(encode_lines(split_lines(corpus, split), vocab), CHUNK_LENGTH)
    for i, chunk in enumerate(chunks):
      written += len(chunk)
      yield i, {"ids": chunk}
    if written != num_tokens:
      raise RuntimeError(f"{split}: wrote {written} tokens, counted {num_tokens}")


def load_vocab(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
  """The prepared data set's vocabulary: entry i is the token of id i."""
  path = builder.data_path / VOCAB_FILE
  if not path.exists():
    raise ConfigError(f"wikitext103 is not prepared in {builder.data_dir} (no {VOCAB_FILE}); "
                      f"prepare it with " + build_command("DIR", os.fspath(builder.data_dir_root)))
  return read_vocab(path)


def prepare(manual_dir: str | None, data_dir: str | None = None) -> Wikitext103:
  """Prepares WikiText-103 from `manual_dir` into `data_dir` (ArrayRecord, no TensorFlow)."""
  builder = Wikitext103(data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format="array_record")
  return builder


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Prepare WikiText-103 without TensorFlow.")
  parser.add_argument("--manual_dir", default=None,
                      help=f"Holds {DIRECTORY}/ or {ARCHIVE} (default DATA_DIR/downloads/manual).")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
  args = parser.parse_args(argv)
  try:
    builder = prepare(args.manual_dir, args.data_dir)
  except ConfigError as error:
    sys.exit(f"error: {error}")
  metadata = builder.info.metadata
  print(f"Prepared {builder.data_dir}: vocabulary of {metadata['vocab_size']} tokens, "
        + ", ".join(f"{split} {n} tokens" for split, n in metadata["num_tokens"].items()))


if __name__ == "__main__":
  main()
