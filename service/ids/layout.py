"""The shape of a semantic ID and its packed integer form.

A semantic ID is ``(c1, ..., cL, d)``: L base codes (``c_l < codebook_sizes[l]``)
and a dedup digit ``d < dedup_size``. ``IdLayout`` packs an ID into one int64 with
``bits`` bits per position, position 0 most significant, so sorting packed IDs
sorts them lexicographically and every prefix is one contiguous ``[lo, hi)`` range.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semid.service.errors import InvalidLayoutError, InvalidPrefixError, InvalidSemanticIdError

_MAX_BITS = 62  # keeps packed ids and prefix upper bounds positive in int64
_LETTERS = string.ascii_lowercase
_PARSE_RE = re.compile(r"[0-9]{1,19}(?:-[0-9]{1,19}){0,63}")


@dataclass(frozen=True, kw_only=True)
class IdLayout:
    """Codebook sizes per level plus the dedup digit's range."""

    codebook_sizes: tuple[int, ...]
    dedup_size: int

    @classmethod
    def for_tokenizer(cls, *, levels: int, codebook_size: int) -> IdLayout:
        """The layout of the IDs semid makes from a tokenizer of ``levels`` x ``codebook_size`` codes: the
        TIGER-style last position (the dedup digit) counts up to ``codebook_size`` items per base code."""
        return cls(codebook_sizes=(codebook_size,) * levels, dedup_size=codebook_size)

    def __post_init__(self) -> None:
        sizes = self.codebook_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) == 0:
            raise InvalidLayoutError(
                f"codebook_sizes must be a non-empty sequence of ints, got {sizes!r}", field="codebook_sizes"
            )
        for level, size in enumerate(sizes):
            if not _is_int(size) or size < 1:
                raise InvalidLayoutError(
                    f"codebook_sizes[{level}] is {size!r}; expected an int >= 1", field="codebook_sizes"
                )
        object.__setattr__(self, "codebook_sizes", tuple(int(s) for s in sizes))
        if not _is_int(self.dedup_size) or self.dedup_size < 1:
            raise InvalidLayoutError(f"dedup_size is {self.dedup_size!r}; expected an int >= 1", field="dedup_size")
        object.__setattr__(self, "dedup_size", int(self.dedup_size))
        if self.width > len(_LETTERS):
            raise InvalidLayoutError(
                f"codebook_sizes has {self.levels} levels; expected at most {len(_LETTERS) - 1}",
                field="codebook_sizes",
            )
        if self.width * self.bits > _MAX_BITS:
            raise InvalidLayoutError(
                f"codebook_sizes/dedup_size need {self.width} x {self.bits} = {self.width * self.bits} bits; "
                f"expected at most {_MAX_BITS}",
                field="codebook_sizes",
            )

    # --- shape ---------------------------------------------------------------------

    @property
    def levels(self) -> int:
        """L, the number of base-code levels."""
        return len(self.codebook_sizes)

    @property
    def width(self) -> int:
        """L + 1, the number of positions of a full semantic ID."""
        return self.levels + 1

    @property
    def sizes(self) -> tuple[int, ...]:
        """Range of every position, the dedup digit last."""
        return (*self.codebook_sizes, self.dedup_size)

    @property
    def bits(self) -> int:
        """Bits used per position in the packed form (the same for every position)."""
        return max(1, max((s - 1).bit_length() for s in self.sizes))

    # --- packing -------------------------------------------------------------------

    def pack(self, ids: np.ndarray) -> np.ndarray:
        """Pack int64 ``[N, width]`` semantic ids into int64 ``[N]``.

        Raises ``InvalidSemanticIdError`` on a wrong shape or a code out of range.
        """
        arr = self._check_codes(ids, self.sizes, what="semantic_ids", error=InvalidSemanticIdError)
        return self._pack_columns(arr)

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """Inverse of ``pack``: int64 ``[N]`` -> int64 ``[N, width]``."""
        keys = np.asarray(packed, dtype=np.int64).reshape(-1)
        mask = np.int64((1 << self.bits) - 1)
        shifts = np.arange(self.width - 1, -1, -1, dtype=np.int64) * self.bits
        return (keys[:, None] >> shifts[None, :]) & mask

    def pack_base(self, codes: np.ndarray) -> np.ndarray:
        """Pack base codes int64 ``[N, L]`` into int64 ``[N]`` bucket keys.

        The key of a base code is the packed full id ``(c1..cL, 0)`` shifted right
        by ``bits``, i.e. ``pack(ids) >> bits == pack_base(ids[:, :L])``.
        """
        arr = self._check_codes(
            codes, self.codebook_sizes, what="base_codes", error=InvalidSemanticIdError, field="base_codes"
        )
        return self._pack_columns(arr)

    def prefix_range(self, prefix: Sequence[int]) -> tuple[int, int]:
        """``[lo, hi)`` in packed full-id space of all ids starting with ``prefix``.

        ``prefix`` has 1..width codes; raises ``InvalidPrefixError`` otherwise.
        """
        codes = self.validate_prefix(prefix, min_length=1)
        lo = 0
        for code in codes:
            lo = (lo << self.bits) | code
        rest = self.bits * (self.width - len(codes))
        lo <<= rest
        return lo, lo + (1 << rest)

    def validate_prefix(self, prefix: Sequence[int], *, min_length: int = 1) -> tuple[int, ...]:
        """Check a prefix of ``min_length..width`` codes and return it as a tuple of ints."""
        if isinstance(prefix, (str, bytes)) or not isinstance(prefix, (Sequence, np.ndarray)):
            raise InvalidPrefixError(f"prefix must be a sequence of ints, got {type(prefix).__name__}")
        if len(prefix) < min_length or len(prefix) > self.width:
            raise InvalidPrefixError(f"prefix has {len(prefix)} codes; expected {min_length}..{self.width}")
        out = []
        for pos, code in enumerate(prefix):
            if not _is_int(code):
                raise InvalidPrefixError(f"prefix position {pos} is {code!r}; expected an int")
            if not 0 <= code < self.sizes[pos]:
                raise InvalidPrefixError(f"prefix position {pos} is {code}; expected 0..{self.sizes[pos] - 1}")
            out.append(int(code))
        return tuple(out)

    def validate(self, sid: Sequence[int]) -> tuple[int, ...]:
        """Check a full semantic id and return it as a tuple of ints."""
        if isinstance(sid, (str, bytes)) or not isinstance(sid, (Sequence, np.ndarray)):
            raise InvalidSemanticIdError(f"semantic id must be a sequence of ints, got {type(sid).__name__}")
        if len(sid) != self.width:
            raise InvalidSemanticIdError(f"semantic id has {len(sid)} codes; expected {self.width}")
        out = []
        for pos, code in enumerate(sid):
            if not _is_int(code):
                raise InvalidSemanticIdError(f"semantic id position {pos} is {code!r}; expected an int")
            if not 0 <= code < self.sizes[pos]:
                raise InvalidSemanticIdError(f"semantic id position {pos} is {code}; expected 0..{self.sizes[pos] - 1}")
            out.append(int(code))
        return tuple(out)

    # --- text forms ----------------------------------------------------------------

    def token(self, sid: Sequence[int]) -> str:
        """``(12, 201, 7, 0)`` -> ``"<a_12><b_201><c_7><d_0>"``."""
        codes = self.validate(sid)
        return "".join(f"<{_LETTERS[pos]}_{code}>" for pos, code in enumerate(codes))

    def tokens(self, ids: np.ndarray) -> list[str]:
        """Tokens of many ids ``[N, width]`` at once."""
        arr = self._check_codes(ids, self.sizes, what="semantic_ids", error=InvalidSemanticIdError)
        if arr.shape[0] == 0:
            return []
        table = self._token_names
        joined = table[0][arr[:, 0]]
        for pos in range(1, self.width):
            joined = joined + table[pos][arr[:, pos]]
        return joined.tolist()

    @functools.cached_property
    def _token_names(self) -> list[np.ndarray]:
        """Per position, the token string of every code (formatted once per layout)."""
        return [
            np.array([f"<{_LETTERS[pos]}_{code}>" for code in range(size)], dtype=object)
            for pos, size in enumerate(self.sizes)
        ]

    @staticmethod
    def parse(text: str, *, field: str = "prefix") -> tuple[int, ...]:
        """``"12-201-7-0"`` -> ``(12, 201, 7, 0)``; ``"12"`` -> ``(12,)``.

        Only ASCII digits separated by single dashes are accepted. Lengths and ranges
        are the callers' business (``prefix_range``/``validate``).
        """
        if not isinstance(text, str) or _PARSE_RE.fullmatch(text) is None:
            raise InvalidPrefixError(
                f"cannot parse {text!r} as a semantic id or prefix; expected codes joined by '-' (12-201-7)",
                field=field,
            )
        return tuple(int(part) for part in text.split("-"))

    # --- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"codebook_sizes": list(self.codebook_sizes), "dedup_size": self.dedup_size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdLayout:
        if not isinstance(data, Mapping):
            raise InvalidLayoutError(f"layout must be a mapping, got {type(data).__name__}", field="layout")
        for key in ("codebook_sizes", "dedup_size"):
            if key not in data:
                raise InvalidLayoutError(f"layout is missing {key!r}", field=key)
        sizes = data["codebook_sizes"]
        if not isinstance(sizes, (list, tuple)):
            raise InvalidLayoutError(f"codebook_sizes must be a list, got {sizes!r}", field="codebook_sizes")
        return cls(codebook_sizes=tuple(sizes), dedup_size=data["dedup_size"])

    # --- helpers -------------------------------------------------------------------

    def _pack_columns(self, arr: np.ndarray) -> np.ndarray:
        packed = np.zeros(arr.shape[0], dtype=np.int64)
        for pos in range(arr.shape[1]):
            packed <<= self.bits
            packed |= arr[:, pos]
        return packed

    @staticmethod
    def _check_codes(
        values: np.ndarray,
        sizes: Sequence[int],
        *,
        what: str,
        error: type[InvalidSemanticIdError],
        field: str | None = None,
    ) -> np.ndarray:
        arr = np.asarray(values)
        if arr.ndim != 2 or arr.shape[1] != len(sizes):
            raise error(f"{what} has shape {arr.shape}; expected (N, {len(sizes)})", field=field or what)
        if arr.shape[0] and arr.dtype.kind not in "iu":
            raise error(f"{what} has dtype {arr.dtype}; expected integers", field=field or what)
        arr = arr.astype(np.int64, copy=False)
        if arr.shape[0] == 0:
            return arr
        limits = np.asarray(sizes, dtype=np.int64)
        bad = (arr < 0) | (arr >= limits[None, :])
        if bad.any():
            row, pos = (int(x) for x in np.argwhere(bad)[0])
            raise error(
                f"{what} row {row} position {pos} is {int(arr[row, pos])}; expected 0..{sizes[pos] - 1}",
                field=field or what,
            )
        return arr


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
