"""A small client for the platform's job API: embed a file of texts into a .npy matrix or a JSONL
file, with a progress bar, resuming an interrupted run instead of paying for its texts twice.

    python -m embedplatform_client embed texts.txt --out vectors.npy

or, from Python:

    from embedplatform_client import EmbedClient, FileEmbedder

    with EmbedClient("http://127.0.0.1:8000", api_key) as client:
        FileEmbedder(client, "texts.txt", "vectors.npy").run(resume=True)

It imports nothing of the server (pyproject.toml's import contract checks it): httpx, numpy,
orjson and tqdm are all it needs.
"""

from embedplatform_client.api import ApiError, AuthError, EmbedClient, QuotaError, TooLarge
from embedplatform_client.bulk import FileEmbedder, JobFailed, Outcome, Part, ResumeRefused
from embedplatform_client.files import InputError

__all__ = [
    "ApiError",
    "AuthError",
    "EmbedClient",
    "FileEmbedder",
    "InputError",
    "JobFailed",
    "Outcome",
    "Part",
    "QuotaError",
    "ResumeRefused",
    "TooLarge",
]
