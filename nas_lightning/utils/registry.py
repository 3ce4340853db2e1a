"""A key -> builder registry (the mmengine / timm idea): arch strings name ops, registries build them."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def _label(key: object) -> str:
    return key.__qualname__ if isinstance(key, type) else str(key)


class Registry(Generic[K, T]):
    """Maps keys (short op names, or space classes) to builders. A duplicate key is an error naming who
    registered it first."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[K, T] = {}

    def register(self, key: K) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if key in self._entries:
                first = self._entries[key]
                raise KeyError(
                    f"{self.kind} {_label(key)!r} is already registered by "
                    f"{getattr(first, '__module__', '?')}.{getattr(first, '__qualname__', first)}"
                )
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, key: K) -> T:
        try:
            return self._entries[key]
        except KeyError:
            known = ", ".join(sorted(_label(k) for k in self._entries))
            raise KeyError(f"unknown {self.kind} {_label(key)!r}; known: {known}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(sorted(self._entries, key=_label))

    def __len__(self) -> int:
        return len(self._entries)
