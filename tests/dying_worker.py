"""A batch function whose worker process dies, for tests/test_input_pipeline.py (a module of
its own so that the worker imports nothing heavy)."""

import os


class DiesAtTwo:
  def __call__(self, index: int) -> dict:
    if index == 2:
      os._exit(3)
    return {"index": index}
