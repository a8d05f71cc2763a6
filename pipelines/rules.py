"""The commit and rejection rules every job that writes an embedding batch follows (``vmem
ingest``, ``vmem import``): which rejections are bad input, the ``--max-reject-ratio`` guard,
the default batch name, and the one encoder per memory (a batch another encoder embedded is
refused before anything is read: the index step refuses mixed batches). Light on purpose: no
Beam, no torch."""
from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from pipelines.manifest import ONLINE_PREFIX, BatchManifest, list_batches, read_parquet_files

DEFAULT_MAX_REJECT_RATIO = 0.1
DEDUPE_POLICIES = ("none", "content")  # --dedupe: keep and list content duplicates | skip them
# Rejections that are the user's policy, not bad input: they never count against the ratio.
POLICY_REJECTIONS = (("dedupe", None), (None, "Unlabelled"), (None, "SkippedByExtension"),
                     (None, "NotARegularFile"))


class RejectRatioExceeded(RuntimeError):
    """More of the input was bad than ``--max-reject-ratio`` allows; the batch was not
    committed (its rejected rows were written, for inspection)."""


class IncompatibleEncoder(ValueError):
    """A batch the memory could not index with its other batches: another encoder or embedding
    length (indexer/reader.py refuses such a mix at every build and add)."""


def memory_kind(memory: str, batch: str) -> tuple[str, int] | None:
    """(encoder, dim) of the memory's committed batches other than ``batch``, None when it has
    none. Raises IncompatibleEncoder when they disagree among themselves."""
    kinds = {}
    for name in list_batches(memory):
        if name != batch:
            manifest = BatchManifest.read(memory, name)
            kinds[(manifest.encoder, manifest.dim)] = name
    if len(kinds) > 1:
        raise IncompatibleEncoder(f"memory {memory} already mixes encoders: {sorted(kinds)}")
    return next(iter(kinds), None)


def check_encoder(memory: str, batch: str, encoder: str, dim: int, given: str) -> None:
    """Refuse batch ``batch`` of ``memory`` embedded by ``encoder`` (``dim`` floats) when the
    memory's other batches were embedded by another encoder or have another length: raises
    IncompatibleEncoder naming the memory's encoder and ``given`` (the option that chose this
    one, e.g. ``--encoder 'efficientnet-lite1'``)."""
    kind = memory_kind(memory, batch)
    if kind is None:
        return
    recorded, memory_dim = kind
    if memory_dim != dim:
        raise IncompatibleEncoder(f"the embeddings have dim {dim} but memory {memory} holds dim "
                                  f"{memory_dim} ({recorded}): they cannot share an index")
    if recorded != encoder:
        raise IncompatibleEncoder(f"{given} but memory {memory} was embedded by {recorded!r} "
                                  f"(dim {dim}): vectors of two encoders are not comparable; "
                                  "use another memory, or name the same encoder")


def is_policy(stage: str, error_type: str) -> bool:
    """Whether a rejection is the user's policy (``POLICY_REJECTIONS``), not bad input."""
    return any((s is None or s == stage) and (e is None or e == error_type)
               for s, e in POLICY_REJECTIONS)


def bad_rejections(directory: str, files: list[dict]) -> int:
    """Rejected rows in ``files`` (under ``directory``) that are bad input: every row but
    the policy rejections (duplicates, unlabelled items rejected on request)."""
    if not files:
        return 0
    table = read_parquet_files([f"{directory}/{f['path']}" for f in files],
                               columns=["stage", "error_type"])
    return sum(1 for stage, error_type in zip(table.column("stage").to_pylist(),
                                              table.column("error_type").to_pylist())
               if not is_policy(stage, error_type))


def check_reject_ratio(bad: int, read: int, limit: float, batch: str, where: str) -> None:
    """Raise RejectRatioExceeded when ``bad / read`` (fraction, 0-1) is over ``limit``
    (a negative limit disables the check; 1.0 allows everything)."""
    if limit < 0 or not read or bad / read <= limit:
        return
    raise RejectRatioExceeded(
        f"batch {batch}: {bad} of {read} inputs ({bad / read:.0%}) were rejected as bad, more "
        f"than --max-reject-ratio {limit:g}; not committing (previous content kept). The "
        f"reasons are in {where}; raise --max-reject-ratio to accept them.")


def default_batch_name(inputs: list[str]) -> str:
    """A deterministic name from the inputs, so re-running a command replaces its batch and
    no other command's. The inputs are normalised (a trailing ``/`` dropped, a local path's
    ``.`` and ``..`` resolved, sorted), so ``data/q/`` and ``./data/q`` name one batch. The
    name is the first one's last two path parts, readable (lower case, runs of other
    characters as ``-``, at most 60 characters), then 8 hex digits of a BLAKE2b hash of all
    of them: ``.../queries/*.tar`` and ``.../new-class/*.tar`` give ``queries-tar-…`` and
    ``new-class-tar-…``. Never starts with ``online-`` (online adds' batches, which gc
    removes when no version lists them)."""
    normal = sorted(_normal(url) for url in inputs)
    parts = [p for p in normal[0].split("/") if p][-2:]
    readable = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-").lower()[-60:].strip("-")
    digest = hashlib.blake2b("\n".join(normal).encode("utf-8"), digest_size=4).hexdigest()
    name = f"{readable or 'batch'}-{digest}"
    return f"ingest-{name}" if name.startswith(ONLINE_PREFIX) else name


def _normal(url: str) -> str:
    url = url.rstrip("/") or "/"
    return url if "://" in url else os.path.normpath(url)  # relative stays relative: the same on every machine


def exit_status(command: str, run: Callable[[], Any]) -> int:
    """Run a job for a CLI: print its ``summary()`` and return 0, or print the message of
    RejectRatioExceeded (return 3) or IncompatibleEncoder (return 2, as a usage error) on
    stderr; nothing was committed."""
    try:
        result = run()
    except RejectRatioExceeded as error:
        print(f"{command}: error: {error}", file=sys.stderr, flush=True)
        return 3
    except IncompatibleEncoder as error:
        print(f"{command}: error: {error}", file=sys.stderr, flush=True)
        return 2
    print(result.summary(), flush=True)
    return 0
