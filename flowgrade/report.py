"""Instructor reports of a graded class: grading/reports/<assignment>.md with a score plot
(<assignment>_scores.png), per-part pass rates, the flagged and failed submissions; and
grading/reports/README.md, one line per assignment. Made by `tools/grade.py report` and
`tools/grade.py all` from grades.csv rows and grading/status.json."""
from __future__ import annotations

import statistics
from pathlib import Path

__all__ = ["write_reports"]


def _plot(path: Path, scores: list[float], flagged: list[float], max_score: float,
          title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    top = max(max_score, max(scores + flagged, default=0.0))
    bins = np.arange(-0.5, int(np.ceil(top)) + 1.5, 1.0)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.hist([scores, flagged], bins=bins, stacked=True, color=["#4c72b0", "#dd8452"],
            label=["graded / failed", "flagged (pending review)"], edgecolor="white")
    ax.set_xlabel(f"score (out of {max_score:g})")
    ax.set_ylabel("submissions")
    ax.set_title(title)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _part_order(course, assignment: str) -> list[str]:
    import nbformat

    order = []
    for src in sorted((course.source / assignment).glob("*.ipynb")):
        for cell in nbformat.read(src, as_version=4).cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade") and meta.get("grade_id"):
                order.append(meta["grade_id"])
    return order


def write_reports(course, rows: list[dict], status: dict, summary=None) -> list[Path]:
    """Write the reports; returns the paths written."""
    course.reports.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index = ["# Grading reports", "",
             "| assignment | submitted | graded | zero | flagged | failed | mean score |",
             "|---|---|---|---|---|---|---|"]
    for ps in sorted({r["assignment"] for r in rows}):
        mine = [r for r in rows if r["assignment"] == ps and r["status"] not in
                ("missing",)]
        if not mine:
            continue
        max_score = next((float(r["max_score"]) for r in mine if r["max_score"] not in
                          (None, "")), 0.0)
        by = {k: [r for r in mine if r["status"] == k]
              for k in ("graded", "flagged", "failed", "ungraded")}
        counted = by["graded"] + by["failed"]
        scores = [float(r["score"]) for r in counted]
        flagged = [float(r["score"]) for r in by["flagged"]]
        everything = scores + flagged
        zero = [r for r in by["graded"] if float(r["score"]) == 0]
        png = course.reports / f"{ps}_scores.png"
        _plot(png, scores, flagged, max_score, f"{ps}: {len(everything)} submission(s)")
        # per-part pass rates over the submissions nbgrader ran (graded and flagged)
        order = _part_order(course, ps)
        parts = {g: [] for g in order}
        points = {}
        for r in by["graded"] + by["flagged"]:
            out = status.get(f"{r['student']}/{ps}", {})
            for cells in out.get("cells", {}).values():
                for g, (s, m) in cells.items():
                    parts.setdefault(g, []).append(float(s))
                    points[g] = float(m)
        lines = [f"# {ps}", "",
                 f"{len(mine)} submission(s): {len(by['graded']) - len(zero)} graded with a "
                 f"score > 0, {len(zero)} graded with 0, {len(by['flagged'])} flagged for "
                 f"review, {len(by['failed'])} failed to run"
                 + (f", {len(by['ungraded'])} not graded yet" if by["ungraded"] else "") + ".",
                 ""]
        if everything:
            lines += [f"Scores out of {max_score:g}: mean {statistics.mean(everything):.2f}, "
                      f"median {statistics.median(everything):g}, min {min(everything):g}, "
                      f"max {max(everything):g} (flagged submissions count their unaffected "
                      "parts only; failed ones count 0).", ""]
        lines += [f"![score distribution]({png.name})", "",
                  "Score distribution; flagged submissions are stacked in orange.", "",
                  "## Parts", "",
                  "| part (grade cell) | points | full marks | mean score |", "|---|---|---|---|"]
        for g, vals in parts.items():
            if not vals:
                continue
            m = points.get(g, 0.0)
            full = sum(1 for v in vals if v == m and m > 0)
            lines.append(f"| `{g}` | {m:g} | {full}/{len(vals)} ({100 * full / len(vals):.0f} %)"
                         f" | {statistics.mean(vals):.2f} |")
        lines.append("")
        lines.append("Pass rates count every submission nbgrader ran, flagged ones with the "
                     "scores nbgrader gave.")
        for what, title in (("flagged", "Flagged for review"), ("failed", "Failed to run")):
            if by[what]:
                lines += ["", f"## {title}", "", "| student | score | why |", "|---|---|---|"]
                for r in sorted(by[what], key=lambda r: r["student"]):
                    why = r["note"].replace("|", "\\|").replace("\n", " ")
                    lines.append(f"| {r['student']} | {float(r['score']):g} | {why} |")
        sandboxes = {status.get(f"{r['student']}/{ps}", {}).get("sandbox", "") for r in mine}
        sandboxes.discard("")
        if sandboxes:
            lines += ["", f"Sandbox: {'; '.join(sorted(sandboxes))}."]
        md = course.reports / f"{ps}.md"
        md.write_text("\n".join(lines) + "\n")
        written += [md, png]
        mean = f"{statistics.mean(everything):.2f} / {max_score:g}" if everything else "-"
        index.append(f"| [{ps}]({md.name}) | {len(mine)} | {len(by['graded']) - len(zero)} | "
                     f"{len(zero)} | {len(by['flagged'])} | {len(by['failed'])} | {mean} |")
    if summary is not None and (summary.results or summary.unchanged):
        index += ["", f"Last autograde: {len(summary.results)} submission(s) graded in "
                      f"{summary.seconds:.1f} s with {summary.workers} worker(s), "
                      f"{len(summary.unchanged)} unchanged and skipped."]
    readme = course.reports / "README.md"
    readme.write_text("\n".join(index) + "\n")
    written.insert(0, readme)
    return written
