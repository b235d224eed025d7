"""A file of texts embedded as jobs, resumably.

The texts are cut into parts (at most `chunk` texts and MAX_PART_BYTES of JSON each); each part
is one job (POST /v1/jobs), at most `window` of them queued at a time so the workers never wait
for the next one. Parts are written to the output in input order as their jobs succeed.

Resuming: `<out>.state.json`, beside the output, records the input's digest, the options, each
part's job id (saved as soon as the server accepts the job, before anything else happens) and
which parts the output already holds. Interrupted at any point (Ctrl-C, kill -9, a lost
connection), the same command with resume=True polls the same jobs again instead of submitting
(and paying quota for) the texts twice, and writes only the parts still missing; a finished
output is left alone. A job the server no longer knows (404), or one that failed or was
cancelled, is submitted again.

One gap: a run killed while POST /v1/jobs is in flight, after the server accepted the job but
before the answer arrived, leaves that job unrecorded; the resumed run submits the part again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from embedplatform_client.api import ApiError, EmbedClient, QuotaError, TooLarge
from embedplatform_client.files import texts_read, writer_for

STATE_VERSION = 1
DEFAULT_CHUNK = 10_000  # texts per job: a tenth of the paid tier's max_job_texts
MAX_PART_BYTES = 32 << 20  # JSON bytes of one job's texts: half the server's JOB_MAX_REQUEST_BYTES default


class ResumeRefused(Exception):
    """The output has a run this one may not continue or redo without being told (the message says how)."""


class JobFailed(ApiError):
    """A part's job ended failed or cancelled; a resumed run submits its texts again."""


@dataclass
class Part:
    start: int
    end: int
    job: str | None = None
    written: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class State:
    """What `<out>.state.json` holds; saved (write, then rename) after every step."""

    input_sha256: str
    options: dict
    total: int
    parts: list[Part]
    url: str = ""
    mark: int = 0  # the writer's mark after the last written part (files.Writer.resume)
    complete: bool = False
    version: int = STATE_VERSION
    path: Path = field(default=Path(), repr=False, compare=False)

    @property
    def written(self) -> int:
        return sum(p.size for p in self.parts if p.written)

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> State | None:
        """The saved state, or None when there is none (or it is unreadable: the run starts over)."""
        try:
            data = json.loads(path.read_text())
            if data.get("version") != STATE_VERSION:
                return None
            data["parts"] = [Part(**p) for p in data["parts"]]
            return cls(**data, path=path)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError):
            return None


def parts_plan(texts: list[str], *, chunk: int, start: int = 0, end: int | None = None) -> list[Part]:
    """texts[start:end] cut into parts of at most `chunk` texts and MAX_PART_BYTES of JSON."""
    parts: list[Part] = []
    end = len(texts) if end is None else end
    first, size = start, 0
    for i in range(start, end):
        n = len(json.dumps(texts[i])) + 2
        if i > first and (i - first >= chunk or size + n > MAX_PART_BYTES):
            parts.append(Part(first, i))
            first, size = i, 0
        size += n
    parts.append(Part(first, end))
    return parts


@dataclass(frozen=True)
class Outcome:
    out: Path
    total: int
    jobs: list[str]
    submitted: int  # jobs this run submitted (0 for a resumed run whose jobs were all submitted before)
    already_complete: bool = False


class FileEmbedder:
    """Embeds the texts of `source` into `out` (.npy or .jsonl) through jobs; see the module docstring.

    `on_part(part)` is called after each part is written (and the state saved). `progress`
    shows a tqdm bar of texts done (the jobs' `done`) out of the file's total, on stderr.
    """

    def __init__(self, client: EmbedClient, source: Path | str, out: Path | str, *, model: str | None = None,
                 dimensions: int | None = None, chunk: int = DEFAULT_CHUNK, window: int = 2,
                 with_text: bool = True, poll: float = 1.0, progress: bool = True,
                 on_part: Callable[[Part], None] | None = None) -> None:
        if chunk < 1 or window < 1:
            raise ValueError("chunk and window must be at least 1")
        self.client = client
        self.source = Path(source)
        self.out = Path(out)
        self.model = model
        self.dimensions = dimensions
        self.chunk = chunk
        self.window = window
        self.with_text = with_text
        self.poll = poll
        self.progress = progress
        self.on_part = on_part
        self.state_path = self.out.with_name(self.out.name + ".state.json")
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.writer_class = writer_for(self.out)  # a bad suffix fails before anything is read
        self.submitted = 0

    def run(self, *, resume: bool = False, restart: bool = False) -> Outcome:
        """Embeds the file. resume: continue the unfinished run the state file records (without it,
        such a run is ResumeRefused); restart: forget it (its jobs are not reused).
        Raises ApiError (the server refused: AuthError, QuotaError, JobFailed, ...) with the state
        saved, so that a later run with resume=True goes on from there."""
        texts, digest = texts_read(self.source)
        options = {"model": self.model, "dimensions": self.dimensions, "with_text": self.with_text,
                   "format": self.out.suffix.lower()}
        state = None if restart else State.load(self.state_path)
        if state is not None:
            if state.input_sha256 != digest or state.options != options or state.total != len(texts):
                raise ResumeRefused(
                    f"{self.state_path} records a run with another input or other options; "
                    "pass --restart to start over (its jobs are not reused).")
            if state.complete and self.out.exists():
                return Outcome(self.out, state.total, [p.job for p in state.parts if p.job], 0, already_complete=True)
            if not state.complete and not resume:
                jobs = sum(1 for p in state.parts if p.job)
                raise ResumeRefused(
                    f"{self.out} has an unfinished run ({state.written} of {state.total} texts written, "
                    f"{jobs} job(s) submitted): re-run with --resume to continue it, or --restart to start over.")
        else:
            state = State(input_sha256=digest, options=options, total=len(texts),
                          parts=parts_plan(texts, chunk=self.chunk), path=self.state_path)
        state.url = self.client.url
        writer = self.writer_class(self.partial, state.total, with_text=self.with_text)
        if state.complete or not writer.resume(state.mark):  # the output or the partial file is gone
            for part in state.parts:
                part.written = False
            state.mark, state.complete = 0, False
            writer.resume(0)
        state.save()

        with tqdm(total=state.total, initial=state.written, unit="text", desc="embedding",
                  disable=not self.progress, dynamic_ncols=True) as bar:
            i = 0
            while i < len(state.parts):
                if not state.parts[i].written:
                    self._submit(state, texts, i)
                    part = state.parts[i]  # _submit may have split it
                    self._wait(state, texts, i, bar)
                    assert part.job is not None
                    vectors = self.client.job_vectors(part.job, part.size)
                    state.mark = writer.write(part.start, texts[part.start:part.end], vectors)
                    part.written = True
                    state.save()
                    bar.update(state.written - bar.n)
                    if self.on_part is not None:
                        self.on_part(part)
                i += 1
        writer.finish(self.out)
        state.complete = True
        state.save()
        return Outcome(self.out, state.total, [p.job for p in state.parts if p.job], self.submitted)

    def _submit(self, state: State, texts: list[str], head: int) -> None:
        """Submits the unwritten parts head..head+window that have no job yet, saving each job id
        at once. A 413 (more texts than the tier takes per job) halves the parts not yet
        submitted and tries again; a spent quota stops the look-ahead (raised for the head)."""
        j = head
        while j < min(len(state.parts), head + self.window):
            part = state.parts[j]
            if part.job is None:
                try:
                    job = self.client.job_create(texts[part.start:part.end], model=self.model,
                                                 dimensions=self.dimensions)
                except TooLarge:
                    if part.size == 1:
                        raise
                    self._shrink(state, texts, j, max(1, part.size // 2))
                    continue
                except QuotaError:
                    if j == head:
                        raise
                    return
                part.job = job["id"]
                self.submitted += 1
                state.save()
            j += 1

    def _shrink(self, state: State, texts: list[str], first: int, chunk: int) -> None:
        """Cuts the parts from `first` on that have no job yet into parts of at most `chunk` texts."""
        self.chunk = chunk
        parts = state.parts[:first]
        for part in state.parts[first:]:
            if part.job is None and not part.written and part.size > chunk:
                parts += parts_plan(texts, chunk=chunk, start=part.start, end=part.end)
            else:
                parts.append(part)
        state.parts = parts
        state.save()

    def _wait(self, state: State, texts: list[str], head: int, bar: tqdm) -> None:
        """Polls the jobs in flight until the head part's job succeeded, moving the bar by their
        `done`. JobFailed when it failed or was cancelled; a job the server does not know is
        submitted again."""
        while True:
            done = state.written
            status = ""
            for part in state.parts[head:head + self.window]:
                if part.job is None or part.written:
                    continue
                try:
                    job = self.client.job_get(part.job)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    part.job = None  # another server, or the job is gone: submit the texts again
                    state.save()
                    self._submit(state, texts, head)
                    break
                done += min(int(job["done"]), part.size)
                if part is not state.parts[head]:
                    continue
                status = job["status"]
                if status in ("failed", "cancelled"):
                    failed, part.job = part.job, None
                    state.save()
                    raise JobFailed(f"Job {failed} (texts {part.start}..{part.end - 1}) {status}: "
                                    f"{job.get('error') or 'no reason given'}. Re-run with --resume to submit "
                                    "these texts again.", code=f"job_{status}")
            if done > bar.n:
                bar.update(done - bar.n)
            if status == "succeeded":
                return
            time.sleep(self.poll)

