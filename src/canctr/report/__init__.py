"""Experiments and reports: the model x seed grid of `canctr reproduce`, summaries beside the CAN paper's
numbers, plots, a self-contained report.html, and `canctr compare` over finished runs (the commands' argparse
wiring is canctr.cli.report; nothing here imports the CLI).

    experiments.py  Grid, run_grid (resumable cells), write_report, reproduce
    summary.py      RunRecord/load_run, mean ± std aggregation, tables (Markdown, CSV), compare
    paper.py        the paper's Table 2/3 numbers mapped to registry names
    plots.py        matplotlib (Agg) PNGs      html.py   report.html rendering
"""
