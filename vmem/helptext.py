"""``--help`` text without reStructuredText markup.

Every job's description is its module docstring, written for the API docs: ``literal`` spans
mark commands, options and names there. On a terminal the double backquotes are noise, so the
command-line parsers format their help with :class:`HelpFormatter`, which shows such a span as
its plain text; ``positive`` is an argparse type shared by the job CLIs. Dependency-free
(argparse and re only), so any job module may import it.
"""
from __future__ import annotations

import argparse
import re

_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)


def plain(text: str) -> str:
    """``text`` with every reStructuredText inline literal (````x````) shown as ``x``."""
    return _LITERAL.sub(r"\1", text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's ``RawDescriptionHelpFormatter`` (descriptions keep their line breaks: module
    docstrings are laid out by hand) that wraps a description written on one line (a
    subcommand's) to the terminal, as argparse's default does, and drops inline-literal markup
    from descriptions, epilogs and each option's help."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text.strip():
            return argparse.HelpFormatter._fill_text(self, text, width, indent)
        return super()._fill_text(text, width, indent)

    def _expand_help(self, action: argparse.Action) -> str:
        return plain(super()._expand_help(action))


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (else argparse's usage error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
