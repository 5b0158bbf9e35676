"""``SemanticIdVocab``: the tokens a generative model reads and writes for a layout's semantic IDs.

Every (position, code) pair is one token, in both common spellings: a level-specific string
(``<a_12>``, ``<b_3>`` ... the dedup digit included, as ``IdLayout.token`` writes them) and a flat int id
``offset + level_offsets[p] + code`` where ``level_offsets[p]`` is the sum of the earlier positions'
sizes (``p * K`` when every position has K codes). Optional special tokens (pad, bos, eos) follow the
codes. ``offset`` appends the whole block to an existing LLM vocabulary (its size).

The JSON form lists every token with its flat id; ``from_json`` refuses a file whose list disagrees
with its layout, offset and special tokens. A vocabulary holds at most ``MAX_TOKENS`` tokens and its
flat ids stay below ``MAX_FLAT_ID`` (int32, as token ids are); a file's counts are compared with its
layout's before any token is built, and ``load`` refuses a file larger than a vocabulary of
``MAX_TOKENS`` can be, before reading it, so a small file cannot declare a huge table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from semid.model.data.files import write_json_atomically
from semid.service.errors import InvalidInputError, InvalidSemanticIdError
from semid.service.ids.layout import IdLayout

FORMAT = "semid-vocab"
VERSION = 1
SPECIALS = ("pad", "bos", "eos")
MAX_TOKENS = 1 << 20  # code tokens of one vocabulary: every one is an embedding row of the model
MAX_FLAT_ID = (1 << 31) - 1  # flat ids are token ids: int32
_FILE_BYTES_PER_TOKEN = 128  # '{"code": 1048575, "id": 2147483647, "level": 25, "token": "<z_1048575>"}' and indent
MAX_FILE_BYTES = MAX_TOKENS * _FILE_BYTES_PER_TOKEN + (1 << 16)
_TOKEN_RE = re.compile(r"<([a-z])_([0-9]{1,19})>")


class InvalidVocabError(InvalidInputError):
    """A vocabulary file or argument is malformed, or disagrees with its layout."""

    code = "invalid_vocab"

    def __init__(self, message: str, *, field: str = "vocab") -> None:
        super().__init__(message, field=field)


@dataclass(frozen=True, kw_only=True)
class SemanticIdVocab:
    """Token strings and flat ids of one layout's codes, plus optional special tokens."""

    layout: IdLayout
    offset: int = 0
    special_tokens: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.layout, IdLayout):
            raise InvalidVocabError(f"layout must be an IdLayout, got {type(self.layout).__name__}", field="layout")
        if isinstance(self.offset, bool) or not isinstance(self.offset, (int, np.integer)) or self.offset < 0:
            raise InvalidVocabError(f"offset is {self.offset!r}; expected an int >= 0", field="offset")
        object.__setattr__(self, "offset", int(self.offset))
        object.__setattr__(self, "special_tokens", bool(self.special_tokens))
        if self.code_tokens > MAX_TOKENS:
            raise InvalidVocabError(
                f"layout {self.layout.sizes} has {self.code_tokens} code tokens; a vocabulary holds at most "
                f"{MAX_TOKENS}",
                field="layout",
            )
        if self.end - 1 > MAX_FLAT_ID:
            raise InvalidVocabError(
                f"offset {self.offset} + {len(self)} tokens passes the largest flat id {MAX_FLAT_ID} (int32)",
                field="offset",
            )

    @classmethod
    def for_layout(cls, layout: IdLayout, *, offset: int = 0, special_tokens: bool = False) -> SemanticIdVocab:
        return cls(layout=layout, offset=offset, special_tokens=special_tokens)

    # --- shape ---------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self.layout.width

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.layout.sizes

    @cached_property
    def level_offsets(self) -> np.ndarray:
        """int64 ``[W]``: the flat id of code 0 at each position (``offset`` included)."""
        return self.offset + np.r_[0, np.cumsum(self.sizes)[:-1]].astype(np.int64)

    @property
    def code_tokens(self) -> int:
        """Tokens of codes: the sum of the positions' sizes."""
        return int(sum(self.sizes))

    def __len__(self) -> int:
        """Tokens in this vocabulary (codes and special tokens; ``offset`` not counted)."""
        return self.code_tokens + (len(SPECIALS) if self.special_tokens else 0)

    @property
    def end(self) -> int:
        """One beyond the largest flat id: the model's vocabulary size when this block comes last."""
        return self.offset + len(self)

    def special_id(self, name: str) -> int | None:
        """Flat id of special token ``name`` (pad, bos, eos), None without special tokens."""
        if name not in SPECIALS:
            raise InvalidVocabError(f"unknown special token {name!r}; expected one of {SPECIALS}", field="name")
        return self.offset + self.code_tokens + SPECIALS.index(name) if self.special_tokens else None

    @property
    def pad_id(self) -> int | None:
        return self.special_id("pad")

    @property
    def bos_id(self) -> int | None:
        return self.special_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self.special_id("eos")

    # --- every token ---------------------------------------------------------------

    @cached_property
    def token_strings(self) -> list[str]:
        """Every token string, in flat-id order (entry ``i`` is flat id ``offset + i``)."""
        names = self.layout._token_names  # one formatted table per layout
        out = [name for pos in range(self.width) for name in names[pos].tolist()]
        if self.special_tokens:
            out += [f"<sid_{name}>" for name in SPECIALS]
        return out

    @cached_property
    def _id_of_string(self) -> dict[str, int]:
        return {token: self.offset + i for i, token in enumerate(self.token_strings)}

    def flat_id(self, token: str) -> int:
        """The flat id of one token string (code or special)."""
        try:
            return self._id_of_string[token]
        except (KeyError, TypeError):
            raise InvalidVocabError(f"{token!r} is not a token of this vocabulary", field="token") from None

    def token(self, flat_id: int) -> str:
        """The token string of one flat id."""
        i = int(flat_id) - self.offset
        if not 0 <= i < len(self):
            raise InvalidVocabError(f"flat id {flat_id} is outside {self.offset}..{self.end - 1}", field="flat_id")
        return self.token_strings[i]

    # --- semantic ids <-> flat ids -------------------------------------------------

    def to_flat(self, sids: Any) -> np.ndarray:
        """int64 ``[N, W]`` semantic IDs (or one ``[W]`` ID) -> their flat ids, same shape."""
        arr = np.asarray(sids)
        one = arr.ndim == 1
        codes = self.layout._check_codes(
            arr.reshape(1, -1) if one else arr, self.sizes, what="semantic_ids", error=InvalidSemanticIdError
        )
        flat = codes + self.level_offsets[None, :]
        return flat[0] if one else flat

    def from_flat(self, flat: Any) -> np.ndarray:
        """Inverse of ``to_flat``; raises ``InvalidSemanticIdError`` for a token not of its position."""
        arr = np.asarray(flat)
        one = arr.ndim == 1
        codes = self.codes_of_flat(arr.reshape(1, -1) if one else arr)
        if codes.ndim != 2 or codes.shape[1] != self.width:
            raise InvalidSemanticIdError(f"flat ids have shape {arr.shape}; expected (N, {self.width})")
        bad = codes < 0
        if bad.any():
            row, pos = (int(x) for x in np.argwhere(bad)[0])
            raise InvalidSemanticIdError(
                f"flat ids row {row} position {pos} is {int(np.asarray(arr).reshape(codes.shape)[row, pos])}; "
                f"expected {self.level_offsets[pos]}..{self.level_offsets[pos] + self.sizes[pos] - 1}"
            )
        return codes[0] if one else codes

    def codes_of_flat(self, flat: Any) -> np.ndarray:
        """int64 ``[B, t]`` (``t <= W``): the code of each flat id at its position, -1 where the token is not
        a code of that position (another level's code, a special or a prompt token). Never raises on values."""
        arr = np.asarray(flat)
        if arr.ndim != 2 or arr.shape[1] > self.width:
            raise InvalidSemanticIdError(f"flat ids have shape {arr.shape}; expected (B, <= {self.width})")
        t = arr.shape[1]
        codes = arr.astype(np.int64, copy=False) - self.level_offsets[None, :t]
        bad = (codes < 0) | (codes >= np.asarray(self.sizes[:t], dtype=np.int64)[None, :])
        return np.where(bad, -1, codes)

    # --- semantic ids <-> strings --------------------------------------------------

    def to_string(self, sid: Sequence[int]) -> str:
        """``(12, 201, 7, 0)`` -> ``"<a_12><b_201><c_7><d_0>"``."""
        return self.layout.token(sid)

    def to_strings(self, sids: Any) -> list[str]:
        return self.layout.tokens(np.asarray(sids))

    def from_string(self, text: str) -> tuple[int, ...]:
        """``"<a_12><b_201><c_7><d_0>"`` -> ``(12, 201, 7, 0)``: exactly one token per position, in order."""
        if not isinstance(text, str):
            raise InvalidSemanticIdError(f"expected a token string, got {type(text).__name__}")
        parts = _TOKEN_RE.findall(text)
        expected = [chr(ord("a") + p) for p in range(self.width)]
        if "".join(f"<{letter}_{code}>" for letter, code in parts) != text or [p[0] for p in parts] != expected:
            raise InvalidSemanticIdError(f"cannot parse {text[:200]!r}; expected {self.width} tokens <a_..><b_..>..")
        return self.layout.validate(tuple(int(code) for _, code in parts))

    def from_strings(self, texts: Sequence[str]) -> np.ndarray:
        """int64 ``[N, W]`` from token strings."""
        if not len(texts):
            return np.zeros((0, self.width), dtype=np.int64)
        return np.array([self.from_string(t) for t in texts], dtype=np.int64)

    def strings_to_flat(self, texts: Sequence[str]) -> np.ndarray:
        return self.to_flat(self.from_strings(texts))

    def flat_to_strings(self, flat: Any) -> list[str]:
        return self.to_strings(self.from_flat(np.asarray(flat).reshape(-1, self.width)))

    # --- files ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The vocab file: layout, offset, special ids, and every token with its flat id."""
        tokens: list[dict[str, Any]] = []
        for pos, size in enumerate(self.sizes):
            base = int(self.level_offsets[pos])
            names = self.token_strings[base - self.offset : base - self.offset + size]
            tokens += [{"id": base + c, "token": names[c], "level": pos, "code": c} for c in range(size)]
        specials = {name: self.special_id(name) for name in SPECIALS} if self.special_tokens else {}
        for name, flat in specials.items():
            tokens.append({"id": flat, "token": self.token(flat), "special": name})
        return {
            "format": FORMAT,
            "version": VERSION,
            "layout": self.layout.to_dict(),
            "offset": self.offset,
            "size": len(self),
            "special_tokens": specials,
            "tokens": tokens,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SemanticIdVocab:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise InvalidVocabError(f"not a {FORMAT} file")
        if data.get("version") != VERSION:
            raise InvalidVocabError(f"vocab version is {data.get('version')!r}; expected {VERSION}")
        specials = data.get("special_tokens")
        if not isinstance(specials, Mapping) or set(specials) not in (set(), set(SPECIALS)):
            raise InvalidVocabError(f"special_tokens must be {{}} or name all of {SPECIALS}")
        vocab = cls(layout=IdLayout.from_dict(data.get("layout")), offset=data.get("offset"), special_tokens=specials)
        tokens, size = data.get("tokens"), data.get("size")
        if not isinstance(tokens, list) or len(tokens) != len(vocab) or size != len(vocab):
            # compared before the full table is built: its cost is then bounded by the file's own length
            listed = len(tokens) if isinstance(tokens, list) else type(tokens).__name__
            raise InvalidVocabError(
                f"the vocab lists {listed} tokens (size {size!r}); its layout, offset and special tokens make "
                f"{len(vocab)}"
            )
        if vocab.to_json() != dict(data):
            raise InvalidVocabError("the vocab's token list disagrees with its layout, offset or special tokens")
        return vocab

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json_atomically(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SemanticIdVocab:
        with open(path, "rb") as f:  # a missing file raises FileNotFoundError
            if os.fstat(f.fileno()).st_size > MAX_FILE_BYTES:  # checked first: read(n) allocates n bytes
                raise InvalidVocabError(f"{path} is larger than {MAX_FILE_BYTES} bytes, a vocab of {MAX_TOKENS} tokens")
            raw = f.read()  # sized from the file (readall), not from the bound
        if len(raw) > MAX_FILE_BYTES:  # it grew while read
            raise InvalidVocabError(f"{path} is larger than {MAX_FILE_BYTES} bytes, a vocab of {MAX_TOKENS} tokens")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidVocabError(f"{path} is not JSON: {err}") from None
        return cls.from_json(data)
