"""Expand shard patterns on any fsspec URL: braces (``{000..099}``, ``{a,b}``) then globs."""
from __future__ import annotations

import contextlib
import re
from typing import Iterator

import fsspec

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``shard-{00..02}.tar`` -> three names; zero padding and ``{a,b}`` lists as in WebDataset."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, end = 0, -1
    for i in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[i], 0)
        if depth == 0:
            end = i
            break
    if end < 0:
        raise ValueError(f"unbalanced braces in {pattern!r}")
    body, prefix, suffix = pattern[start + 1 : end], pattern[:start], pattern[end + 1 :]
    match = _RANGE.match(body)
    if match:
        low, high = match.groups()
        width = len(low) if low.startswith("0") and len(low) > 1 else 0
        step = 1 if int(high) >= int(low) else -1
        options = [str(n).zfill(width) for n in range(int(low), int(high) + step, step)]
    else:
        options = _split_top_level(body)
    return [expanded for option in options for expanded in expand_braces(prefix + option + suffix)]


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in body:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    return parts + [current]


def _has_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def _as_url(pattern: str, path: str) -> str:
    """A matched path back in the pattern's own spelling (``memory://a/b``, ``gs://b/k``)."""
    if "://" not in pattern:
        return path
    protocol = pattern.split("://", 1)[0]
    return f"file://{path}" if protocol == "file" else f"{protocol}://{path.lstrip('/')}"


def _literal_matches(fs, path: str) -> list[str] | None:
    """The files at a literal path (a directory's files, recursively; or the one file), or
    None when nothing exists at that path."""
    if fs.isdir(path):
        return sorted(fs.find(path))
    if fs.exists(path):
        return [path]
    return None


def _escape(path: str) -> str:
    """``path`` with its glob characters matching themselves (``[`` -> ``[[]``)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def _glob_files(fs, path: str) -> list[str]:
    """The files a glob matches; a matched directory stands for the files under it. When
    nothing matches and a leading part of the pattern exists literally with glob characters
    in its name (``photos [2024]/*/*.png``), that part is taken literally."""
    found = fs.glob(path, detail=True)
    if not found:
        parts = path.split("/")
        for n in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:n])
            if prefix and _has_glob(prefix) and fs.exists(prefix):
                found = fs.glob(_escape(prefix) + "/" + "/".join(parts[n:]), detail=True)
                break
    files: list[str] = []
    for name, info in found.items():
        files += fs.find(name) if info.get("type") == "directory" else [name]
    return sorted(files)


def literal_exists(url: str) -> bool:
    """Whether a file or directory exists at ``url`` taken literally (no brace/glob expansion).
    Raises TimeoutError naming ``url`` when its server does not answer."""
    with _answered(url):
        fs, path = fsspec.core.url_to_fs(url)
        return fs.exists(path)


@contextlib.contextmanager
def _answered(url: str) -> Iterator[None]:
    """Re-raise a timeout (fsspec's FSTimeoutError carries no message) naming ``url``."""
    try:
        yield
    except TimeoutError as error:
        raise TimeoutError(f"{url!r}: the server did not answer in time while listing the "
                           f"inputs ({type(error).__name__}; pipelines/storage.py bounds "
                           f"http reads)") from error


def expand_urls(patterns: str | list[str], glob: bool = True) -> list[str]:
    """Every file URL matched by the patterns (sorted, deduplicated); a pattern matching
    nothing is an error naming it, so a typo never silently ingests zero images.

    A path that exists is always taken literally (``photos [2024]`` or ``a{1,2}`` as real
    names), before brace and glob expansion; patterns expand only when nothing exists under
    that exact name (and a glob below an existing folder with glob characters in its name,
    ``photos [2024]/*/*.png``, takes that folder literally). A directory stands for every
    file under it. With ``glob=False`` nothing is expanded: every pattern is a literal path.
    Raises FileNotFoundError naming the first pattern that matches no file, TimeoutError
    naming one whose server does not answer (pipelines.storage ``bound_http_reads``).
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    urls: list[str] = []
    for pattern in patterns:
        with _answered(pattern):
            urls.extend(_expand(pattern, glob))
    return sorted(dict.fromkeys(urls))


def _expand(pattern: str, glob: bool) -> list[str]:
    """The file URLs of one pattern (``expand_urls``)."""
    fs, path = fsspec.core.url_to_fs(pattern)
    literal = _literal_matches(fs, path)
    if literal is not None or not glob:
        if not literal:
            raise FileNotFoundError(f"no files match {pattern!r} (taken literally)")
        return [_as_url(pattern, m) for m in literal]
    urls: list[str] = []
    for candidate in expand_braces(pattern):
        fs, path = fsspec.core.url_to_fs(candidate)
        matches = _literal_matches(fs, path)
        if matches is None:
            matches = _glob_files(fs, path) if _has_glob(path) else []
        if not matches:
            raise FileNotFoundError(f"no files match {candidate!r}")
        urls.extend(_as_url(candidate, m) for m in matches)
    return urls
