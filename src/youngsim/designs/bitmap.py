"""A caller's ``unsigned long *bitmap``: thread-local memory, so plain Python, with the
kernel's bit helpers. Out-of-range accesses raise, as they would corrupt the caller's
stack in C."""

from __future__ import annotations


class Bitmap:
    __slots__ = ("bits",)

    def __init__(self, nbits: int) -> None:
        self.bits = bytearray(nbits)

    def __len__(self) -> int:
        return len(self.bits)

    def _check(self, nr: int) -> None:
        if not 0 <= nr < len(self.bits):
            raise IndexError(f"bit {nr} outside a {len(self.bits)}-bit bitmap")

    def test_bit(self, nr: int) -> bool:
        self._check(nr)
        return bool(self.bits[nr])

    def set_bit(self, nr: int) -> None:
        self._check(nr)
        self.bits[nr] = 1

    def clear_bit(self, nr: int) -> None:
        self._check(nr)
        self.bits[nr] = 0

    def set_bits(self) -> list[int]:
        return [i for i, b in enumerate(self.bits) if b]

    def copy(self) -> "Bitmap":
        b = Bitmap(len(self.bits))
        b.bits[:] = self.bits
        return b

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bitmap) and self.bits == other.bits

    def __repr__(self) -> str:
        return f"Bitmap({self.set_bits()} of {len(self.bits)})"
