"""The interface between serving code and compute: a model names its Dispatcher.

Serving code (embeddings/serving.py) never asks where a model runs. It asks the model's
dispatcher to `submit` the texts it lacks (a Handle), lets the admission queue the handle's
`push` in its own round trip where there is one, calls `send` once admitted, then `wait`s.
Two dispatchers exist: LocalDispatch (dispatch/local.py: the platform's models, a Redis list
drained by the workers' drain loops) and ProviderDispatch (providers/dispatch.py: a tenant's
BYOK provider, a Celery task on the provider queue). A new kind of work is a new dispatcher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from dispatch.frames import WorkItem

# What a request's input_type may say (a model's prompts and a provider's cache keys are keyed by it).
INPUT_TYPES = ("query", "document")


@dataclass(frozen=True)
class WorkPush:
    """Work that the admission script (accounts.quotas.admit) queues once the request is admitted,
    in the same round trip: a Redis list, refused when no worker is alive or the list is full
    (dispatch.local.WORK_REFUSAL_LUA)."""

    list_key: str
    alive_key: str
    payload: bytes
    max_depth: int
    refused: Callable[[int], Exception]  # the error for "no worker alive" (-1) or a full queue (its depth)


@dataclass
class Handle:
    """Submitted work: the item a request waits on, and what the admission may queue for it."""

    model: ServedModel
    item: WorkItem
    push: WorkPush | None = None  # queued by the admission's round trip (accounts.quotas.admit), if given to it
    queued: bool = False  # set once the item is on its way (by the admission or by send)


class Dispatcher(ABC):
    kind: ClassVar[str]  # "local" | "byok": what /v1/models calls the compute, the metrics' model label
    counts_usage: ClassVar[bool]  # True: the compute side records the misses' usage (else the web does)
    runs_jobs: ClassVar[bool]  # whether /v1/jobs may use the model

    @abstractmethod
    def submit(self, *, model: ServedModel, texts: list[str], keys: list[bytes], scope: int, wait: float,
               tenant: int, counts: list[int] | None = None) -> Handle:
        """A handle for `texts` (the model's inputs) whose request waits `wait` seconds. No I/O."""

    @abstractmethod
    def send(self, handle: Handle) -> None:
        """Puts the work on its way unless the admission already did (handle.queued). Raises
        Overloaded (503) when nothing can take it."""

    @abstractmethod
    def wait(self, handle: Handle, *, wait: float) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32[n], vectors float32[n, dims]) in the order of the submitted texts, within
        `wait` seconds (else WaitTimeout). Raises the compute side's error when it failed."""


class ServedModel(Protocol):
    """What serving code knows of a model, wherever it runs (embeddings.registry.ModelSpec,
    providers.dispatch.ProviderModel)."""

    # Read-only (properties): the models are frozen dataclasses.
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...  # part of every cache key

    @property
    def normalize(self) -> bool: ...

    @property
    def owned_by(self) -> str: ...

    @property
    def dims(self) -> int | None: ...  # None: known only from the vectors (a provider's)

    @property
    def max_tokens(self) -> int | None: ...  # None: the compute side enforces its own

    @property
    def max_dimensions(self) -> int: ...  # the largest `dimensions` a request may ask for

    @property
    def matryoshka_dims(self) -> tuple[int, ...]: ...  # besides the full width, the only `dimensions` it takes; (): any

    @property
    def kind(self) -> str: ...  # "embed" (vectors) or "rerank" (one relevance score per query-document pair)

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def metrics_label(self) -> str: ...  # a bounded label value for Prometheus

    def prompt(self, input_type: str | None) -> str: ...

    def key_prefix(self, input_type: str | None) -> str: ...

    def token_counts(self, texts: list[str]) -> list[int] | None: ...  # None: cannot count here
