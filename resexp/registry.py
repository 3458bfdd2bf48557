"""Name -> component tables. Configs pick components by registered name, never by import path,
so a config file stays data and cannot make resexp call an arbitrary callable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from resexp.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: `@BLOCKS.register("basic")` (defaults to the object's __name__)."""

        def add(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.list())}"
            ) from None

    def list(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.list()})"
