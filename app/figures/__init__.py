"""Pure figures: tables and arrays in, plotly figures or image frames out; no Streamlit here.

* ``plots`` -- every page's figures (densities, evolution, distances, compare, patch overlays) and the
  talk-mode layout;
* ``head_plots`` -- the Heads page: one map per head, object IoU beside chance, heads over training;
* ``run_plots`` -- the Runs page: accuracy against density/FLOPs, learning curves with topology updates;
* ``gif`` -- animated GIFs of mask evolution and keep maps (PIL, no browser).
"""
