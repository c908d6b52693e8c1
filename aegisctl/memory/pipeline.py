"""A bounded pipeline of threads: each stage feeds the next through a small queue.

A stage's failure travels downstream as `Failed` and is raised in the consumer; `stop` ends
every stage promptly (a put or get never blocks for more than 0.1 s without looking at it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


DONE = object()


def put(box: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            box.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def take(box: queue.Queue[Any], stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return box.get(timeout=0.1)
        except queue.Empty:
            continue
    return DONE


def stage(name: str, items: Callable[[], Iterator[Any]], outbox: queue.Queue[Any],
           stop: threading.Event) -> threading.Thread:
    """A thread feeding `outbox` from `items()`, then DONE; an error travels as Failed."""
    def body() -> None:
        try:
            for item in items():
                if not put(outbox, item, stop):
                    return
            put(outbox, DONE, stop)
        except BaseException as exc:
            put(outbox, Failed(exc), stop)

    thread = threading.Thread(target=body, name=f"aegisctl-import-{name}", daemon=True)
    thread.start()
    return thread


def upstream(inbox: queue.Queue[Any], stop: threading.Event, shared: bool = False
              ) -> Iterator[Any]:
    """Items of the previous stage; its failure is raised here and so passed along. With
    several consumers (`shared`), the end mark is put back for the others."""
    while True:
        item = take(inbox, stop)
        if item is DONE or isinstance(item, Failed):
            if shared:
                put(inbox, item, stop)
            if isinstance(item, Failed):
                raise item.error
            return
        yield item
