"""A registry by name, shared by methods, tasks and model adapters (lm-eval's task registry
is the model: registering is a decorator, looking up an unknown name lists the known ones).

One idiom for all three: ``REGISTRY.register(obj)`` files ``obj`` under ``obj.name`` and
returns it, so it serves as a class decorator (methods, adapters) and as a call on an
instance (tasks)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, check: Callable[[T], None] | None = None) -> None:
        self.kind = kind
        self._check = check
        self._entries: dict[str, T] = {}

    def register(self, obj: T) -> T:
        """File ``obj`` under its ``name``; a second, different object under one name is a bug."""
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string `name` to be registered: {obj!r}")
        if self._check is not None:
            self._check(obj)
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries)) or '(none registered)'}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
