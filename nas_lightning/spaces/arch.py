"""The architecture value type shared by every search space."""

from __future__ import annotations

from dataclasses import dataclass, field

from typing_extensions import override


@dataclass(frozen=True, order=True)
class Arch:
    """One choice index per decision of a search space, plus its canonical string.

    Equality, ordering and hashing use the indices only; ``str(arch)`` is the space's official
    format (for NAS-Bench-201, ``|nor_conv_3x3~0|+|...|``). Build archs through a space
    (``space.decode``, ``space.arch``, ``space.sample``), which validates the indices.
    """

    indices: tuple[int, ...]
    text: str = field(compare=False)

    @override
    def __str__(self) -> str:
        return self.text

    @override
    def __repr__(self) -> str:
        return f"Arch({self.text!r})"

    def __len__(self) -> int:
        return len(self.indices)
