"""Reading fixed-width integers off a sensor payload, refusing to read past its end."""

from __future__ import annotations

from citytel.domain import Reason
from citytel.errors import RejectedMessage


def undecodable(codec: str, f_port: int, raw: bytes, problem: str) -> RejectedMessage:
    """The error for bytes a codec cannot read, naming the codec, port and bytes."""
    detail = f"{codec} codec, fPort {f_port}, payload {raw.hex().upper() or '(empty)'}: {problem}"
    return RejectedMessage(Reason.UNDECODABLE, detail)


class ByteReader:
    """A cursor over a payload; every read checks that the bytes are there."""

    def __init__(self, codec: str, f_port: int, raw: bytes) -> None:
        self.codec = codec
        self.f_port = f_port
        self.raw = raw
        self.position = 0

    @property
    def remaining(self) -> int:
        """How many bytes are left to read."""
        return len(self.raw) - self.position

    def fail(self, problem: str) -> RejectedMessage:
        """The error for this payload, to raise."""
        return undecodable(self.codec, self.f_port, self.raw, problem)

    def take(self, count: int, what: str) -> bytes:
        """The next ``count`` bytes, which must all be there."""
        if self.remaining < count:
            problem = (
                f"{what} needs {count} bytes at offset {self.position}, "
                f"but only {self.remaining} remain"
            )
            raise self.fail(problem)
        chunk = self.raw[self.position : self.position + count]
        self.position += count
        return chunk

    def u8(self, what: str) -> int:
        """An unsigned byte."""
        return self.take(1, what)[0]

    def i8(self, what: str) -> int:
        """A signed byte."""
        return int.from_bytes(self.take(1, what), "big", signed=True)

    def u16le(self, what: str) -> int:
        """An unsigned 16-bit little-endian integer."""
        return int.from_bytes(self.take(2, what), "little")

    def i16le(self, what: str) -> int:
        """A signed 16-bit little-endian integer."""
        return int.from_bytes(self.take(2, what), "little", signed=True)

    def u16be(self, what: str) -> int:
        """An unsigned 16-bit big-endian integer."""
        return int.from_bytes(self.take(2, what), "big")

    def end(self) -> None:
        """Refuse trailing bytes: what is not understood is not half-read."""
        if self.remaining:
            problem = f"{self.remaining} unexpected bytes after offset {self.position}"
            raise self.fail(problem)

    def exactly(self, count: int, what: str) -> None:
        """Refuse a payload whose length is not ``count``."""
        if len(self.raw) != count:
            problem = f"{what} is {count} bytes, not {len(self.raw)}"
            raise self.fail(problem)
