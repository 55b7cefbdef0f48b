"""Jitted functions built once per task object, so repeated studies compile once."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")
_MAX_TASKS = 8  # tasks hold data; keep only the last few


def per_task(build: Callable[[Any], T]) -> Callable[[Any], T]:
  """`build(task)`, cached by the task object's identity (tasks hold unhashable data)."""
  cache: dict[int, tuple[Any, T]] = {}

  def get(task: Any) -> T:
    entry = cache.get(id(task))
    if entry is None or entry[0] is not task:  # a new task may reuse a freed id
      if len(cache) >= _MAX_TASKS:
        cache.clear()
      entry = cache[id(task)] = (task, build(task))
    return entry[1]

  return get
