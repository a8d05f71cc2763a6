"""The command-line arguments a job passes through to Beam, checked before it runs.

``vmem ingest`` and ``vmem update`` hand every argument they do not define to Beam's
``PipelineOptions`` (``--runner``, ``--project``, ``--temp_location``...). Beam only logs an
argument that no options class defines ("Unparseable argument") and drops it, so a mistyped
option of the job (``--encodr``) or a second value after a one-value option (``--input a b``)
would be ignored while the job runs with its defaults. These are refused instead.
"""
from __future__ import annotations

import argparse
import difflib


def unknown_pipeline_args(args: list[str]) -> list[str]:
    """The arguments of ``args`` that no Beam ``PipelineOptions`` class defines, in order:
    ``--name`` / ``--name=value`` options Beam does not know, and values that follow no
    option. Imports Beam only when ``args`` is not empty."""
    if not args:
        return []
    from apache_beam.options.pipeline_options import PipelineOptions

    known = set(PipelineOptions([]).get_all_options())
    found = set(PipelineOptions(args).get_all_options(retain_unknown_options=True))
    unknown = {name.split("=", 1)[0].replace("-", "_") for name in found - known}
    refused = []
    for position, arg in enumerate(args):
        if arg.startswith("--"):
            if arg[2:].split("=", 1)[0].replace("-", "_") in unknown:
                refused.append(arg)
        elif not (position and args[position - 1].startswith("--") and "=" not in args[position - 1]):
            refused.append(arg)  # a value after a value (or first): no option takes it
    return refused


def check_pipeline_args(parser: argparse.ArgumentParser, args: list[str]) -> None:
    """Exit through ``parser.error`` (status 2, the usage on stderr) when ``args`` holds an
    argument that neither ``parser`` nor Beam defines, naming the closest option of either."""
    refused = unknown_pipeline_args(args)
    if not refused:
        return
    options = [o for action in parser._actions for o in action.option_strings]  # noqa: SLF001 - argparse has no public list
    hints = []
    for arg in refused:
        close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1) if arg.startswith("--") else []
        hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    parser.error(f"unrecognised argument(s), neither this command's nor a Beam pipeline "
                 f"option: {', '.join(hints)}. Options that take several values are repeated "
                 f"(--input a --input b).")
