"""Runs made elsewhere, read into the same row and curves the runs index holds for ours: one reader per
layout, like timm's one ``checkpoint_filter_fn`` per foreign format.

* ``deit`` -- DeiT / SViTE output folders (``log.txt``: one JSON line per epoch; ``checkpoint.pth`` in the
  official layout: its ``args`` and masks);
* ``timm_folder`` -- timm ``train.py`` folders (``summary.csv`` as the curve, ``args.yaml``);
* ``events`` -- TensorBoard event files (read with tensorboard's own ``EventAccumulator``).

``detect`` tells the walk which layout a folder that is not one of ours has (its file names first, then a
capped peek at one small file); ``foreign`` gives the index a run's row and the files whose change makes it
read again, and the curves. A damaged or hostile file costs its run a field and a one-line note, never an
exception. This package's ``__init__`` imports nothing, so the walk can use ``detect`` alone.
"""
