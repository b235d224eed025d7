"""python -m embedplatform_client embed TEXTS --out OUT.npy|OUT.jsonl [options]

Exit status: 0 done (or already done), 1 the server refused or could not be reached, 2 a bad
command line, input file or state file, 130 interrupted (re-run with --resume).
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from embedplatform_client.api import DEFAULT_URL, ApiError, EmbedClient, QuotaError
from embedplatform_client.bulk import DEFAULT_CHUNK, FileEmbedder, ResumeRefused
from embedplatform_client.files import InputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m embedplatform_client",
                                     description="Embed files of texts through the platform's job API.")
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser(
        "embed", help="embed a file of texts into .npy or .jsonl",
        description="Embeds TEXTS (one text per line, or .jsonl with a \"text\" field per line) as jobs and "
                    "writes the vectors in input order. Interrupted, the same command with --resume goes on with "
                    "the jobs it submitted (OUT.state.json records them) instead of submitting the texts again.")
    embed.add_argument("texts", help="input: a text per line (.txt), or JSONL objects with a \"text\" field")
    embed.add_argument("--out", required=True,
                       help="output: .npy (float32 matrix, row i = text i) or .jsonl ({index, text, embedding})")
    embed.add_argument("--url", default=None, help=f"the platform's address (default: $EMBED_URL or {DEFAULT_URL})")
    embed.add_argument("--api-key", default=None, help="an API key of your tenant (default: $EMBED_API_KEY)")
    embed.add_argument("--model", default=None, help="the model (default: the server's default model)")
    embed.add_argument("--dimensions", type=int, default=None, help="keep the first N components, renormalized")
    embed.add_argument("--chunk", "--batch-size", type=int, default=DEFAULT_CHUNK, dest="chunk",
                       help=f"texts per job (default {DEFAULT_CHUNK}; halved by itself if the tier allows fewer)")
    embed.add_argument("--window", type=int, default=2, help="jobs queued at a time (default 2)")
    embed.add_argument("--no-text", action="store_true", help="leave the text out of .jsonl lines")
    embed.add_argument("--poll", type=float, default=1.0, help="seconds between progress polls (default 1)")
    group = embed.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the unfinished run recorded beside --out")
    group.add_argument("--restart", action="store_true", help="forget the recorded run and submit everything again")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # `kill` stops it as Ctrl-C does: the state is saved either way
    err = sys.stderr.write
    try:
        with EmbedClient(args.url, args.api_key) as client:
            embedder = FileEmbedder(client, args.texts, args.out, model=args.model, dimensions=args.dimensions,
                                    chunk=args.chunk, window=args.window, with_text=not args.no_text,
                                    poll=args.poll, progress=not args.quiet)
            outcome = embedder.run(resume=args.resume, restart=args.restart)
    except KeyboardInterrupt:
        err(f"\nInterrupted. The jobs go on on the server; run the same command with --resume to continue "
            f"(state: {args.out}.state.json).\n")
        return 130
    except (InputError, ResumeRefused, ValueError) as exc:
        err(f"error: {exc}\n")
        return 2
    except QuotaError as exc:
        err(f"error: {exc.message}\nWhat was done is kept; run the same command with --resume when the quota "
            "allows.\n")
        return 1
    except ApiError as exc:
        err(f"error: {exc.message}\n")
        return 1
    if outcome.already_complete:
        sys.stdout.write(f"{outcome.out} is already complete ({outcome.total} texts); nothing to do.\n")
    else:
        sys.stdout.write(f"Wrote {outcome.total} vectors to {outcome.out} "
                         f"({len(outcome.jobs)} job(s), {outcome.submitted} submitted by this run).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
