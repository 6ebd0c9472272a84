"""Exporting a folder of runs as run records (``svite runs DIR --export OUT``): what the app ships
as its sweep (``checkpoints/runs/``), without a single weight.

Each run becomes ``OUT/<its path below DIR>/svite-run.json`` (:mod:`records`): its table row, its
training config and its curves. Runs that are themselves records are not exported again, nor are runs
still going (a record is frozen: it would say "running" for ever; they are named in the notes), and
``OUT`` may not lie inside ``DIR`` (the next index would list every run twice).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint.header import read_header
from ..errors import SviteError
from ..training.rundir import CHECKPOINT_NAME, CONFIG_NAME
from .files import read_small_json
from .index import index_runs
from .readers.foreign import run_curves  # every run's curves, ours and those made elsewhere
from .records import thin, write_record
from .walk import RECORD_NAME

#: Row fields that describe where a run lay on the exporting machine, not the run.
_LOCAL = ("name", "path", "checkpoint", "source")


def _config(path: Path) -> dict:
    config = read_small_json(path / CONFIG_NAME) if path.is_dir() else None
    if config:
        return config
    ckpt = path / CHECKPOINT_NAME if path.is_dir() else path
    try:
        return dict((read_header(ckpt).meta or {}).get("train_config") or {})
    except SviteError:
        return {}


def export_records(root: str | Path, out: str | Path) -> tuple[list[Path], list[str]]:
    """Write a record per run below ``root`` into ``out``; returns the files written and the index's notes."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise SviteError("not a folder of runs", path=root)
    if out.exists() and not out.is_dir():
        raise SviteError(f"--export {out}: exists and is not a folder")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise SviteError(f"--export {out}: lies inside {root}; the next index would list every run twice")
    runs, notes = index_runs(root)
    written = []
    running = runs["status"] == "running"  # a record is frozen: "running" would stay so for ever
    notes = [*notes, *(f"{name}: still running, not exported (export again when it has finished)"
                       for name in runs.loc[running, "name"])]
    for row in runs[(runs["source"] != "record") & ~running].to_dict("records"):
        path = Path(row["path"])
        curves = run_curves(path, row["source"])
        tables = curves.as_record()
        tables["steps"] = thin(tables["steps"])
        summary = {k: v for k, v in row.items() if k not in _LOCAL}
        rel = Path(row["name"]) if path.is_dir() else Path(row["name"]).with_suffix("")
        record = {"summary": summary, "config": _config(path), "curves": tables,
                  "exported_from": {"name": row["name"], "curve_source": curves.source}}
        written.append(write_record(out / rel / RECORD_NAME, record))
    return written, notes
