"""Runs: every run below the runs folders in one view: the table (filter, CSV, open runs on every
page), configurations grouped over seeds with paired differences, the paper's accuracy-against-cost
plots and the learning curves with every topology update marked."""

from __future__ import annotations

from app import runs_view, sweep, ui

table, notes = sweep.all_runs()
runs_view.header(table, notes)
if table.empty:
    runs_view.empty_help()
else:
    shown = runs_view.filters(table)
    picked = runs_view.runs_table(shown)
    runs_view.grouped(shown)
    runs_view.paper_plots(shown)
    runs_view.curves(shown, picked)
    runs_view.follow(table)
ui.next_page_footer("runs")
