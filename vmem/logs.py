"""Logging for the command-line tools: the project's records at the level asked for, the
libraries' chatter kept out unless that level is DEBUG.

Beam logs every pipeline step at INFO (type-hint conversions, batch sizes, one line of
several thousand characters), faiss's loader says at INFO which CPU-specific library it did
not find, torch logs its FakeTensor cache statistics at exit, and Serve says "Connecting to
existing Serve app" when ``serve.run`` follows our ``serve.start``: at a command's default
level a user would read these as the tool's own progress (or as failures). At DEBUG
everything is shown.
"""
from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s %(message)s"
# Loggers held at WARNING unless the level asked for is DEBUG.
CHATTY = ("apache_beam", "faiss.loader", "torch")
# Records dropped whatever the level: (logger, start of the message). Serve's own
# ``serve.run`` calls its start again after ours, which only configures the HTTP options;
# Beam warns on import that its optional Google Cloud clients are missing (this project reads
# and writes storage through fsspec, gs:// included, not through Beam's file systems).
DROPPED = (("ray.serve", "Connecting to existing Serve app"),
           ("apache_beam.io.filesystems", "Failed to import GCSFileSystem"),
           ("root", "apitools not found"))


class _Drop(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def configure_logging(level: str | int = "INFO") -> None:
    """Root logger at ``level`` (a name, "info", or a number) on stderr with the tools' format;
    CHATTY libraries at WARNING unless ``level`` is DEBUG; DROPPED records filtered out.
    Replaces a configuration an import made (Beam's). Raises ValueError for an unknown level
    name."""
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
    if not isinstance(number, int):  # getLevelName's "Level X" for a name it does not know
        raise ValueError(f"unknown logging level {level!r}")  # noqa: TRY004  a bad value
    logging.basicConfig(level=number, format=FORMAT, force=True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if number <= logging.DEBUG
                                         else max(number, logging.WARNING))
    drop_noise()


def drop_noise() -> None:
    """Filter the DROPPED records out (idempotent): the ``vmem`` program calls it before it
    imports a command's module, whose imports (Beam's) log some of them."""
    for name, prefix in DROPPED:
        logger = logging.getLogger(None if name == "root" else name)
        if not any(isinstance(f, _Drop) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_Drop(prefix))
