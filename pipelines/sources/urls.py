"""Expand shard patterns on any fsspec URL: braces (``{000..099}``, ``{a,b}``) then globs."""
from __future__ import annotations

import re

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


def expand_urls(patterns: str | list[str]) -> list[str]:
    """Every file URL matched by the patterns (sorted, deduplicated); a pattern matching
    nothing is an error naming it, so a typo never silently ingests zero images."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    urls: list[str] = []
    for pattern in patterns:
        for candidate in expand_braces(pattern):
            fs, path = fsspec.core.url_to_fs(candidate)
            if _has_glob(path):
                matches = sorted(fs.glob(path))
            elif fs.isdir(path):
                matches = sorted(fs.find(path))
            elif fs.exists(path):
                matches = [path]
            else:
                matches = []
            if not matches:
                raise FileNotFoundError(f"no files match {candidate!r}")
            urls.extend(_as_url(candidate, m) for m in matches)
    return sorted(dict.fromkeys(urls))
