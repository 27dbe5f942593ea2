"""The layer shape both benchmark scripts describe their configs with."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    """N images of C x H x W in, O channels out (3x3 kernel, padding 1);
    offset_groups and weight groups as torchvision infers them."""

    N: int
    C: int
    H: int
    W: int
    O: int
    offset_groups: int = 1
    groups: int = 1

    @property
    def label(self) -> str:
        s = f"{self.N}x{self.C}x{self.H}x{self.W}->{self.O}"
        s += f" G={self.offset_groups}" if self.offset_groups > 1 else ""
        return s + (f" groups={self.groups}" if self.groups > 1 else "")
