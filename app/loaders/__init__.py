"""Cached data access: everything the pages show that costs time to compute, computed once per file
and kept with Streamlit's caches (keyed by the file's identity and stamp, so a rewritten file is read
again).

* ``checkpoint_data`` -- a checkpoint and its analyses (density, evolution, distances, integrity, FLOPs);
* ``heads_data`` / ``patch_data`` -- the Heads and Patch maps pages' model passes and attributions;
* ``runs_data`` -- the runs index of each runs folder, refreshed as runs appear and finish;
* ``catalog`` -- the checkpoints the picker offers, and saving an upload (checked in a child process);
* ``images`` / ``photos`` -- images a user brings, decoded as the file means them, and offline photos.
"""
