"""Token counting in the web process with the model's fast tokenizer (no torch import).

Used only where the API must know a length before any worker runs: truncate=false
requests are refused with 400 when a text is over the model's max_tokens.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from tokenizers import Tokenizer


@cache
def _tokenizer(path: str) -> Tokenizer | None:
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        return None
    tok = Tokenizer.from_file(str(file))
    tok.no_truncation()
    tok.no_padding()
    return tok


def token_counts(path: str, texts: list[str]) -> list[int] | None:
    """Token counts including special tokens, or None when the model at `path` ships no tokenizer.json."""
    tok = _tokenizer(path)
    if tok is None:
        return None
    return [len(e.ids) for e in tok.encode_batch(texts)]
