"""Issue 12 kinds 5-10: odd paths, pathological shapes, inputs that never end, reject ratio,
every file accounted for, leftovers. Every input is written by the test."""
from __future__ import annotations

import pytest

from pipelines.ingest import build_parser
from pipelines.sources import expand_urls, make_source
from tests.conftest import encode, photo


def _folder(root, names):
    png = encode(photo("coffee.png").resize((32, 32)), "PNG")
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png)
    return root


# Kind 5: literal paths with glob characters.
def test_existing_path_with_brackets_is_literal(tmp_path):
    tree = _folder(tmp_path / "photos [2024]", ["cat/a.png", "dog/b.png"])
    assert [u.rsplit("/", 2)[-2:] for u in expand_urls(str(tree))] == [["cat", "a.png"],
                                                                       ["dog", "b.png"]]
    # a pattern below a literal bracketed folder: the existing file is taken literally
    assert len(expand_urls(str(tree / "cat" / "a.png"))) == 1
    source = make_source("folder")
    items = [item for task in source.plan(str(tree)) for item in source.read(task)]
    assert sorted((i.key, i.label) for i in items) == [("cat/a.png", "cat"), ("dog/b.png", "dog")]


def test_patterns_expand_only_when_no_such_path_exists(tmp_path):
    _folder(tmp_path, ["s1.png", "s2.png", "x.png"])
    assert len(expand_urls(str(tmp_path / "s[12].png"))) == 2
    _folder(tmp_path, ["s[12].png"])  # now a file of that exact name exists: literal wins
    assert expand_urls(str(tmp_path / "s[12].png")) == [str(tmp_path / "s[12].png")]
    assert len(expand_urls(str(tmp_path / "s{1,2}.png"))) == 2


def test_no_glob_forces_literal(tmp_path):
    _folder(tmp_path, ["s1.png", "s2.png"])
    with pytest.raises(FileNotFoundError, match="taken literally"):
        expand_urls(str(tmp_path / "s*.png"), glob=False)
    assert len(expand_urls(str(tmp_path / "s1.png"), glob=False)) == 1
    args = build_parser().parse_args(["--input", "x", "--memory", "m", "--no-glob"])
    assert args.no_glob
    assert "--no-glob" in build_parser().format_help()
