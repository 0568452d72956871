"""Side by side: the per-model AUC (mean ± std over seeds) of several `canctr reproduce` reports, one column
per report, e.g. the same models under two preparation protocols or two co-action pair sets.

    python benchmarks/compare_reports.py --title "Generalisation test, Beauty" \
        --report normal=runs/gen/beauty_normal --report "test pairs removed=runs/gen/beauty_excl" \
        --commands "canctr prepare ..." --out benchmarks/results/generalisation_beauty
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def per_model(report: Path) -> dict[str, list[float]]:
    rows = json.loads((report / "results.json").read_text())["rows"]
    out: dict[str, list[float]] = {}
    for r in rows:
        if r.get("auc") is not None:
            out.setdefault(r["label"] if "label" in r else r["model"], []).append(r["auc"])
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f} ({len(values)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", action="append", required=True, help="LABEL=REPORT_DIR (repeatable, column order)")
    ap.add_argument("--title", required=True)
    ap.add_argument("--commands", nargs="*", default=[], help="the commands that produced the reports (recorded)")
    ap.add_argument("--note", action="append", default=[], help="a paragraph under the table (repeatable)")
    ap.add_argument("--out", default=None, help="results file stem (.json + .md)")
    a = ap.parse_args()
    columns = []
    for spec in a.report:
        label, _, path = spec.partition("=")
        columns.append((label, per_model(Path(path))))
    models = list(dict.fromkeys(m for _, col in columns for m in col))
    lines = [f"# {a.title}", "", f"Date: {time.strftime('%Y-%m-%d')}. AUC mean ± sample std over seeds (runs).", ""]
    if a.commands:
        lines += ["Commands:", "", "```bash", *a.commands, "```", ""]
    lines += ["| model | " + " | ".join(label for label, _ in columns) + " |",
              "|---|" + "---|" * len(columns)]
    lines += [f"| {m} | " + " | ".join(fmt(col.get(m, [])) for _, col in columns) + " |" for m in models]
    lines += ["", *[n + "\n" for n in a.note]]
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if a.out:
        from canctr.bench import write_results

        write_results(a.out, {"title": a.title, "commands": a.commands, "columns": dict(columns)}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
