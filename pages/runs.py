"""Runs: every run below the runs folders in one view: the table (filter, CSV, open runs on every
page), configurations grouped over seeds with paired differences, the paper's accuracy-against-cost
plots and the learning curves with every topology update marked."""

from __future__ import annotations

from app.loaders import runs_data
from app.widgets import runs_view, ui

table, notes = runs_data.all_runs()
runs_view.header(table, notes)
sentence = ui.story_slot()
if table.empty:
    runs_view.empty_help()
else:
    shown = runs_view.filters(table)
    sentence.markdown(runs_view.story_of(shown))
    talk = ui.talk_mode()
    if talk:  # a talk opens on the paper's plots; the tables wait behind expanders
        runs_view.paper_plots(shown)
    with ui.details("The runs", heading=False):
        picked = runs_view.runs_table(shown)
    with ui.details("Grouped by configuration", heading=False):
        runs_view.grouped(shown)
    if not talk:
        runs_view.paper_plots(shown)
    runs_view.curves(shown, picked)
    runs_view.follow(table)
ui.next_page_footer("runs")
