"""A tournament's report: leaderboard.json, an HTML page and the model card's leaderboard.

Pure renderings of the leaderboard entries (finetune_core.tournament.LeaderboardEntry); the
executors write them to `tournaments/<namespace>/<name>/g<gen>/report/`. The HTML page opens
with no network: the leaderboard, each candidate's gated latency per profile drawn against
its limit (side by side), and links to the candidates' own reports, which hold their loss
curves and latency histograms.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

from finetune_core.tournament import LeaderboardCandidate, LeaderboardEntry, LeaderboardFile

BAR_WIDTH = 260


def leaderboard_file(
    entries: Sequence[LeaderboardEntry], metric: str, winner: str | None
) -> LeaderboardFile:
    return LeaderboardFile(
        winner=winner,
        metric=metric,
        candidates=[
            LeaderboardCandidate(
                name=e.name,
                phase=e.phase,
                eval_loss=e.eval_loss,
                bits_per_byte=e.bits_per_byte,
                perplexity=e.perplexity,
                sla_passed=e.sla_passed,
                rank=e.rank,
            )
            for e in entries
        ],
    )


def _number(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


def _latency(entry: LeaderboardEntry) -> str:
    return ", ".join(f"{p.name} {_number(p.seconds, '.3g')} s" for p in entry.latency) or "-"


def _sla(entry: LeaderboardEntry) -> str:
    return "-" if entry.sla_passed is None else ("pass" if entry.sla_passed else "fail")


def markdown(entries: Sequence[LeaderboardEntry], metric: str, winner: str | None) -> str:
    """The leaderboard as a Markdown section (appended to the winner's model card)."""
    lines = [
        "",
        "## Tournament leaderboard",
        "",
        f"Ranked by {metric} (lower is better; ties by gated latency). Winner: {winner or 'none'}.",
        "",
        "| Rank | Candidate | Phase | Eval loss | Bits/byte | Perplexity | Gated latency | SLA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        cells = [
            str(e.rank) if e.rank is not None else "-",
            e.name,
            e.phase or "-",
            _number(e.eval_loss),
            _number(e.bits_per_byte),
            _number(e.perplexity),
            _latency(e),
            _sla(e),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bars(entry: LeaderboardEntry) -> str:
    """One bar per profile: the gated percentile against the limit (a line at the limit)."""
    rows = []
    for index, p in enumerate(entry.latency):
        top = max(p.limit or 0.0, p.seconds or 0.0) * 1.25 or 1.0
        width = int(BAR_WIDTH * (p.seconds or 0.0) / top)
        limit_x = int(BAR_WIDTH * (p.limit or 0.0) / top)
        colour = "#2e7d32" if p.passed else "#c62828"
        y = index * 26
        rows.append(
            f'<text x="0" y="{y + 14}" font-size="11">{html.escape(p.name)}</text>'
            f'<rect x="70" y="{y + 3}" width="{width}" height="14" fill="{colour}"/>'
            f'<line x1="{70 + limit_x}" x2="{70 + limit_x}" y1="{y}" y2="{y + 20}" '
            'stroke="#000" stroke-dasharray="3,2"/>'
            f'<text x="{75 + BAR_WIDTH}" y="{y + 14}" font-size="11">'
            f"{_number(p.seconds, '.3g')} s / {_number(p.limit, 'g')} s</text>"
        )
    height = max(26 * len(entry.latency), 20)
    return (
        f'<svg width="{BAR_WIDTH + 170}" height="{height}" role="img" '
        f'aria-label="gated latency of {html.escape(entry.name)}">' + "".join(rows) + "</svg>"
    )


def slug(name: str) -> str:
    """A profile name as the benchmark names its chart (latency-<slug>.png)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "profile"


def _charts(entry: LeaderboardEntry, report_dir: str | None) -> str:
    """The candidate's own charts, from its run's report directory (a path relative to this
    page): its loss curve and its latency distribution per profile, drawn against the limit."""
    if report_dir is None:
        return ""
    names = ["loss.png", *(f"latency-{slug(p.name)}.png" for p in entry.latency)]
    return "".join(
        f'<img src="{html.escape(report_dir)}/{html.escape(name)}" alt="{html.escape(name)}" '
        'width="320" loading="lazy">'
        for name in names
    )


def render_html(
    title: str,
    entries: Sequence[LeaderboardEntry],
    metric: str,
    winner: str | None,
    report_dirs: Mapping[str, str] | None = None,
) -> str:
    """The tournament's report page: self-contained but for the candidates' own charts,
    which it shows from their run directories in the same store (`report_dirs`, candidate
    -> a path relative to this page)."""
    report_dirs = report_dirs or {}
    head = (
        "<tr><th>Rank</th><th>Candidate</th><th>Phase</th><th>Eval loss</th><th>Bits/byte</th>"
        "<th>Perplexity</th><th>SLA</th><th>Why</th><th>Report</th></tr>"
    )
    rows = []
    for e in entries:
        link = f'<a href="{html.escape(e.report)}">report</a>' if e.report else "-"
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(cell)}</td>"
                for cell in (
                    str(e.rank) if e.rank is not None else "-",
                    e.name + (" (winner)" if e.name == winner else ""),
                    e.phase or "-",
                    _number(e.eval_loss),
                    _number(e.bits_per_byte),
                    _number(e.perplexity),
                    _sla(e),
                    e.message or "",
                )
            )
            + f"<td>{link}</td></tr>"
        )
    panels = "".join(
        f'<div class="panel"><h3>{html.escape(e.name)}</h3>{_bars(e)}'
        f"<div>{_charts(e, report_dirs.get(e.name))}</div></div>"
        for e in entries
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        ".panels{display:flex;flex-wrap:wrap;gap:1em}.panel{border:1px solid #ddd;padding:8px}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Ranked by <b>{html.escape(metric)}</b> (lower is better; ties by gated latency). "
        f"Winner: <b>{html.escape(winner or 'none')}</b>.</p>"
        f"<table>{head}{''.join(rows)}</table>"
        "<h2>Side by side</h2>"
        "<p>Each candidate's gated latency against the limits, its loss curve and its latency "
        "distributions (from its own report).</p>"
        f'<div class="panels">{panels}</div>'
        "</body></html>"
    )
