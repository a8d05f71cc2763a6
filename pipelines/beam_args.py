"""The command-line arguments a job passes through to Beam, checked before it runs.

``vmem ingest`` and ``vmem update`` hand every argument they do not define to Beam's
``PipelineOptions`` (``--runner``, ``--project``, ``--temp_location``...). Beam only logs an
argument that no options class defines ("Unparseable argument") and drops it, so a mistyped
option (``--encodr``, ``--temp-location`` for ``--temp_location``), a value after a flag that
takes none, a second value after a one-value option (``--input a b``) or a ``--`` would be
ignored while the job runs with its defaults. These are refused instead.
"""
from __future__ import annotations

import argparse
import difflib
import importlib

# Runners whose options classes live in their own modules (Beam registers an options class
# when its module is imported): imported, when they can be, before the check.
RUNNER_OPTION_MODULES = ("apache_beam.runners.dask.dask_runner", "apache_beam.runners.render")


def pipeline_options() -> dict[str, argparse.Action]:
    """Every option string Beam's ``PipelineOptions`` classes define (as Beam's own
    ``get_all_options`` builds its parser), with its argparse action."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    for module in RUNNER_OPTION_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # that runner's extra is not installed: its options cannot apply
            pass
    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - how Beam itself collects its options
    return {option: action for action in parser._actions for option in action.option_strings}  # noqa: SLF001


def unknown_pipeline_args(args: list[str]) -> list[str]:
    """The arguments of ``args`` Beam would drop, in order: an option string no Beam options
    class defines, exactly as spelled (Beam's spellings use underscores), ``--``, and a value
    that follows no option taking one (the value of a refused option is not listed apart).
    Imports Beam only when ``args`` is not empty."""
    if not args:
        return []
    options = pipeline_options()
    refused, takes_value = [], False
    for arg in args:
        if arg.startswith("--") and arg != "--":
            name, has_value = arg.split("=", 1)[0], "=" in arg
            action = options.get(name)
            if action is None:
                refused.append(arg)
            # the next bare word is its value (an unknown option's too: refused with it)
            takes_value = (action is None or action.nargs != 0) and not has_value
        elif takes_value:  # the value of the option before it (a negative number included)
            takes_value = False
        else:
            refused.append(arg)
    return refused


def check_pipeline_args(parser: argparse.ArgumentParser, args: list[str]) -> None:
    """Exit through ``parser.error`` (status 2, the usage on stderr) when ``args`` holds an
    argument that neither ``parser`` nor Beam defines, naming the closest option of either
    (a Beam option spelt with dashes: its underscore spelling)."""
    refused = unknown_pipeline_args(args)
    if not refused:
        return
    candidates = [o for action in parser._actions for o in action.option_strings]  # noqa: SLF001 - argparse has no public list
    candidates += list(pipeline_options())
    hints = []
    for arg in refused:
        name = arg.split("=", 1)[0]
        close = (difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
                 if name.startswith("--") and name != "--" else [])
        hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    parser.error(f"unrecognised argument(s), neither this command's nor a Beam pipeline "
                 f"option: {', '.join(hints)}. Beam's options are spelt with underscores "
                 f"(--temp_location); options that take several values are repeated "
                 f"(--input a --input b).")
