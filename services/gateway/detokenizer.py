"""Token ids → text deltas that never split a UTF-8 character, with stop strings.

Decoding is `tokenizers`' DecodeStream. Stop strings are found in the text: text that might be
the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers.decoders import DecodeStream


class TextStream:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self._tokenizer = tokenizer
        self._decode = DecodeStream(skip_special_tokens=True)
        self._stop = [s for s in stop if s]
        self._held = ""
        self.stopped = False

    def push(self, token_ids: Iterable[int]) -> str:
        """Text that is safe to send now. After a stop string, always ""."""
        if self.stopped:
            return ""
        pieces = (self._decode.step(self._tokenizer, t) for t in token_ids)
        new = "".join(p for p in pieces if p)
        if not self._stop:
            return new
        text = self._held + new
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)]
        keep = self._partial_stop_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """At the end of the stream, what was held back."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best
