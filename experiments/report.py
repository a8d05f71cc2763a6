"""``report/index.html``: every experiment's JSON rendered as one static page (plots and gallery
images are files beside it, referenced relatively: it opens from disk, no server)."""
from __future__ import annotations

import html
from datetime import datetime, timezone

from experiments.results import Result
from pipelines import storage

ORDER = ["demo", "aggregation", "new-classes", "memory-size", "unlearning", "pruning", "label-noise",
         "interpretability", "reranking"]
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;font-size:.9rem}
th{background:#f3f3f3}.pass{color:#0a7a2f}.fail{color:#b00020}section{border-top:2px solid #ddd;margin-top:2rem}
.claim{font-style:italic}.gallery{display:flex;flex-wrap:wrap;gap:1rem}.case{border:1px solid #ccc;padding:.5rem}
.case.wrong{border-color:#b00020}.case img{image-rendering:pixelated;width:72px;height:72px;display:block}
.row{display:flex;gap:.4rem}.tile{font-size:.75rem;text-align:center;width:80px}.agree{color:#0a7a2f}
.disagree{color:#b00020}img.plot{max-width:100%}
"""


def clear_results(out: str) -> None:
    """Remove the results a previous run left in ``out`` (only files this package writes), so a
    fresh run's report shows only what it measured."""
    for name in ORDER:
        for suffix in (".json", ".png"):
            storage.remove(storage.join(out, name + suffix))
    storage.remove(storage.join(out, "gallery"))


def results_in(out: str) -> list[Result]:
    names = [n[:-5] for n in storage.list_names(out) if n.endswith(".json")]
    ordered = [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)
    return [Result.read(storage.join(out, f"{name}.json")) for name in ordered]


def _e(value) -> str:
    return html.escape(str(value))


def _table(columns: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tile(image: str, caption: str, css: str = "") -> str:
    picture = f'<img src="{_e(image)}" alt="{_e(caption)}">' if image else "<div>(image unavailable)</div>"
    return f'<div class="tile {css}">{picture}{caption}</div>'


def _gallery(entries: list[dict]) -> str:
    cases = []
    for entry in entries:
        tiles = [_tile(entry["image"], f"query<br>true: {_e(entry['label'])}<br>"
                                       f"<b>predicted: {_e(entry['predicted'])}</b>")]
        tiles += [_tile(n["image"], f"#{n['rank'] + 1} {_e(n['label'])}<br>d={n['distance']:.3f} "
                                    f"vote={n['vote']:.3f}", "agree" if n["agrees"] else "disagree")
                  for n in entry["neighbours"]]
        state = "correct" if entry["correct"] else "wrong"
        cases.append(f'<div class="case {state}" data-case="{state}"><div>{state}: {_e(entry["key"])}</div>'
                     f'<div class="row">{"".join(tiles)}</div></div>')
    return f'<h3>Attribution gallery</h3><div class="gallery">{"".join(cases)}</div>'


def _section(result: Result) -> str:
    checks = "".join(f'<li class="{"pass" if c.passed else "fail"}">{"PASS" if c.passed else "FAIL"}: '
                     f"{_e(c.name)} — {_e(c.detail)}</li>" for c in result.checks)
    plot = f'<img class="plot" src="{_e(result.plot)}" alt="{_e(result.title)} plot">' if result.plot else ""
    gallery = _gallery(result.gallery) if result.gallery else ""
    return (f'<section id="{_e(result.experiment)}"><h2>{_e(result.title)}</h2>'
            f'<p class="claim">{_e(result.claim)}</p><p>{_e(result.setup)}</p>'
            f"{_table(result.columns, result.rows)}<ul>{checks}</ul>{plot}{gallery}"
            f"<p><small>{result.seconds:.1f} s, {_e(result.created)}</small></p></section>")


def write_report(out: str) -> str:
    """Render every result under ``out`` into ``out/index.html`` (atomically) and return its URL."""
    results = results_in(out)
    summary_rows = "".join(
        f'<tr><td><a href="#{_e(r.experiment)}">{_e(r.title)}</a></td>'
        f'<td class="{"pass" if r.passed else "fail"}">{sum(c.passed for c in r.checks)}/{len(r.checks)}</td>'
        f"<td>{r.seconds:.1f}</td></tr>" for r in results)
    summary = ("<table><thead><tr><th>experiment</th><th>checks passed</th><th>seconds</th></tr></thead>"
               f"<tbody>{summary_rows}</tbody></table>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Visual memory report</title>"
            f"<style>{STYLE}</style></head><body><h1>Visual memory: the paper's claims, measured</h1>"
            f"<p>Geirhos et al., Towards flexible perception with visual memory (arXiv 2408.08172). "
            f"Written {_e(datetime.now(timezone.utc).isoformat(timespec='seconds'))}.</p>"
            f"{summary}{''.join(_section(r) for r in results)}</body></html>")
    url = storage.join(out, "index.html")
    storage.write_bytes_atomic(url, page.encode())
    return url


def summary_lines(results: list[Result]) -> list[str]:
    """The console table: one line per experiment, then each check."""
    lines = []
    for result in results:
        passed = sum(c.passed for c in result.checks)
        lines.append(f"{result.title:<36} {passed}/{len(result.checks)} checks  {result.seconds:6.1f} s")
        lines += [f"    {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in result.checks]
    return lines
