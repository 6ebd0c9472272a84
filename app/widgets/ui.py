"""Shared page furniture: navigation, the sidebar checkpoint picker and upload, talk mode, and the
helpers every page uses to show figures (PNG from plotly's toolbar) and tables (with a CSV button)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from sparsity_core.checkpoint import LoadedCheckpoint
from sparsity_core.errors import SviteError

from ..figures import head_plots, plots
from ..figures.plots import PLOTLY_CONFIG
from ..loaders import catalog, checkpoint_data, runs_data
from ..settings import (
    CHECKPOINT_SUFFIXES,
    IS_CHECKOUT,
    checkpoints_dir,
    pages_dir,
    runs_dir,
    torch_threads,
    upload_limit_mb,
)
from ..text import tables

#: (file in pages/, title, icon), in the navigation's order.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("overview", "Overview", ":material/dashboard:"),
    ("density", "Layer density", ":material/bar_chart:"),
    ("evolution", "Mask evolution", ":material/timeline:"),
    ("heads", "Heads", ":material/visibility:"),
    ("patches", "Patch maps", ":material/grid_on:"),
    ("compare", "Compare", ":material/compare_arrows:"),
    ("runs", "Runs", ":material/table_chart:"),  # first (and the default) whenever there is more than one run
    ("retrain", "Retrain", ":material/model_training:"),
)
#: The story a talk tells, in order ("runs" only with runs to show: talk_path()).
TALK_PATH = ("runs", "overview", "density", "evolution", "heads", "patches", "compare")
CKPT_KEY = "ckpt"
TALK_KEY = "talk_mode"
#: Seeded defaults the talk path starts from (widget keys of the pages -> values).
TALK_DEFAULTS: dict[str, Any] = {
    "density_snapshot": "final", "evo_metric": "jaccard", "evo_group": "block_type",
    "patch_source": "Demo dataset", "patch_demo_index": 8, "patch_method": "attention_rollout",
    "compare_mode": "Two checkpoints",
}

#: Talk-mode styles. The metric rules are more specific than the paragraph rule (the metric's value is a
#: paragraph too: a plain ``p`` rule shrank it from 36 px to 24.7 px). Tables are HTML (``st.table``) in
#: talk mode, so their text scales here; st.dataframe draws on a canvas that CSS cannot enlarge.
TALK_CSS = """
<style>
html, body { font-size: 19px; }
[data-testid="stMarkdownContainer"] p, [data-testid="stMarkdownContainer"] li { font-size: 1.3rem; }
[data-testid="stMetricValue"], [data-testid="stMetricValue"] [data-testid="stMarkdownContainer"] p,
[data-testid="stMetricValue"] div { font-size: 3.4rem !important; line-height: 1.15; }
[data-testid="stMetricLabel"] p, [data-testid="stMetricLabel"] div { font-size: 1.3rem !important; }
[data-testid="stMetricDelta"], [data-testid="stMetricDelta"] div { font-size: 1.2rem !important; }
[data-testid="stTable"] td, [data-testid="stTable"] th { font-size: 1.25rem !important; padding: 0.35rem 0.6rem; }
h1 { font-size: 3rem !important; padding-top: 0.4rem !important; }
h2, h3 { font-size: 2.1rem !important; }
[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] p { font-size: 1.15rem !important; }
.st-key-story p { font-size: 1.6rem !important; line-height: 1.3; }
[data-testid="stMainBlockContainer"] { padding-top: 2rem !important; }
</style>
"""
#: Rows a talk-mode table shows (the CSV button below it has them all).
TALK_TABLE_ROWS = 25

_PAGE_OBJECTS: dict[str, Any] = {}


# ----------------------------------------------------------------------------------------------
# page set-up
def talk_mode() -> bool:
    return bool(st.session_state.get(TALK_KEY, False))


def configure_page() -> None:
    """Page config (talk mode: wide, sidebar collapsed, larger fonts). Call first in main.

    ``?talk=1`` in the address starts a session in talk mode (a bookmark for the talk; the toggle keeps
    the address in step), on the same seeded path as the toggle."""
    if torch.get_num_threads() != torch_threads():
        torch.set_num_threads(torch_threads())
    if TALK_KEY not in st.session_state and st.query_params.get("talk") in ("1", "true", "on"):
        st.session_state[TALK_KEY] = True
        _seed_talk_path()
    talk = talk_mode()
    st.set_page_config(page_title="SViTE Explorer", page_icon=":material/blur_on:",
                       layout="wide" if talk else "centered",
                       initial_sidebar_state="collapsed" if talk else "auto")
    if talk:
        st.markdown(TALK_CSS, unsafe_allow_html=True)


def navigation_pages() -> list[Any]:
    """``st.Page`` objects for ``pages/*.py`` (kept so pages can link to each other).

    Streamlit serves the default page at ``/`` only, so ``/overview`` (or ``/overview?talk=1``, a
    natural bookmark) would say "Page not found": a hidden page runs the same script at its own address."""
    pages = []
    for i, (key, title, icon) in enumerate(_page_order()):
        script = str(pages_dir() / f"{key}.py")
        page = st.Page(script, title=title, icon=icon, url_path=f"{key}-home" if i == 0 else key, default=i == 0)
        _PAGE_OBJECTS[key] = page
        pages.append(page)
        if i == 0:
            pages.append(st.Page(script, title=title, icon=icon, url_path=key, visibility="hidden"))
    return pages


def _page_order() -> tuple[tuple[str, str, str], ...]:
    """PAGES, with the Runs page first when there is more than one run to show."""
    if runs_data.run_count() <= 1:
        return PAGES
    return tuple(p for p in PAGES if p[0] == "runs") + tuple(p for p in PAGES if p[0] != "runs")


def talk_path() -> tuple[str, ...]:
    return TALK_PATH if runs_data.run_count() > 1 else tuple(k for k in TALK_PATH if k != "runs")


def _talk_default_checkpoint(entries: list[catalog.CheckpointEntry]) -> str | None:
    demos = [e for e in entries if e.source == "demo"]
    return (demos or entries)[0].path if (demos or entries) else None


def _on_talk_toggle() -> None:
    """Entering talk mode starts the seeded path: the best demo checkpoint, fixed page defaults."""
    if not st.session_state.get(TALK_KEY):
        st.query_params.pop("talk", None)
        return
    st.query_params["talk"] = "1"
    _seed_talk_path()


def _seed_talk_path() -> None:
    entries = catalog.find_checkpoints()
    default = _talk_default_checkpoint(entries)
    if default is not None:
        st.session_state[CKPT_KEY] = default
    for key, value in TALK_DEFAULTS.items():
        st.session_state[key] = value
    demos = {Path(e.path).stem: e.path for e in entries if e.source == "demo"}
    if "dense" in demos:
        st.session_state["compare_b"] = demos["dense"]
    if "s2vite" in demos and default is not None:  # the heads page shows heads pruned (S²ViTE) in a talk
        st.session_state[_CHOICE.format("heads_ckpt")] = demos["s2vite"]
        st.session_state[_FOLLOWS.format("heads_ckpt")] = default


def sidebar() -> None:
    """Talk-mode toggle, checkpoint picker and upload: on every page (called by app/main.py)."""
    with st.sidebar:
        st.markdown("### SViTE Explorer")
        st.toggle("Talk mode", key=TALK_KEY, on_change=_on_talk_toggle,
                  help="Wide layout, larger fonts, page controls tucked into expanders, and a seeded, offline "
                       "path through the pages (Next → at the bottom of each page).")
        picker = st.container()
        upload_box = st.container()
    _upload(upload_box)
    entries = catalog.find_checkpoints()
    paths = [e.path for e in entries]
    labels = {e.path: e.label for e in entries}
    with picker:
        if not entries:
            make = ("run `python scripts/make_demo_checkpoints.py`, train one" if IS_CHECKOUT else
                    "train one (`svite train --out runs/demo`), record one from your own loop (`Recorder`)")
            st.warning(f"No checkpoints found in {checkpoints_dir()} or {runs_dir()}: {make}, or upload one below.")
            st.session_state.pop(CKPT_KEY, None)
            return
        if st.session_state.get(CKPT_KEY) not in paths:
            st.session_state[CKPT_KEY] = _talk_default_checkpoint(entries)
        st.selectbox("Checkpoint", paths, key=CKPT_KEY, format_func=lambda p: labels.get(p, Path(p).name),
                     help=f"Shipped demos ({checkpoints_dir()}), runs ({runs_dir()}) and uploads.")


def _upload(box: Any) -> None:
    limit = upload_limit_mb()
    with box:
        up = st.file_uploader(f"Upload a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}; ≤ {limit} MB)",
                              key="upload_ckpt", accept_multiple_files=False, max_upload_size=limit)
        if up is None:
            return
        if st.session_state.get("_upload_id") != up.file_id:
            st.session_state["_upload_id"] = up.file_id
            try:
                with st.spinner(f"Checking {up.name} (in a separate process)…"):
                    path = catalog.save_upload(up.name, up.getvalue(), limit)
            except SviteError as err:
                st.session_state["_upload_msg"] = ("error", f"Cannot use this upload: {err}")
            else:
                st.session_state[CKPT_KEY] = str(path)
                st.session_state["_upload_msg"] = ("ok", f"Loaded {up.name}")
        kind, msg = st.session_state.get("_upload_msg", ("ok", ""))
        (st.error if kind == "error" else st.success)(msg)


# ----------------------------------------------------------------------------------------------
# what pages call
def current_path() -> str | None:
    return st.session_state.get(CKPT_KEY)


def current_label() -> str:
    path = current_path()
    labels = {e.path: e.label for e in catalog.find_checkpoints()}
    return labels.get(path, Path(path).name) if path else "no checkpoint"


def explain(err: BaseException, path: str | None = None) -> str:
    """An error as a whole sentence for the page, from the error's values (``SviteError``: message, path,
    detail): the file's base name instead of its full path, the library's own words (the detail) left out,
    a full stop at the end. Anything that is not a ``SviteError`` is a bug of ours and is said to be one."""
    name = Path(path).name if path else "this file"
    if not isinstance(err, SviteError):
        return (f"The explorer failed while reading {name}: an internal error ({type(err).__name__}), not a problem "
                "with your file; please report it (run `svite inspect` on the file with SVITE_DEBUG=1 for details).")
    where = Path(err.path).name if err.path else (name if path else None)
    text = err.sentence(with_detail=False, path_as=where)
    return text if text.endswith((".", "!", "?")) else text + "."


def require_checkpoint(path: str | None = None) -> tuple[str, LoadedCheckpoint]:
    """The picked checkpoint (or ``path``), loaded; stops the page with a clear message if there is none
    or it cannot be read (the app itself stays up)."""
    path = path or current_path()
    if not path:
        st.info("Pick a checkpoint in the sidebar (or upload one) to begin.")
        st.stop()
    try:
        return path, checkpoint_data.load(path)
    except Exception as err:  # noqa: BLE001 (any unreadable file is a message, never a traceback)
        st.error(f"Cannot read this checkpoint: {explain(err, path)}")
        st.stop()
    raise AssertionError("unreachable")


def require_vit(loaded: LoadedCheckpoint, page: str) -> None:
    """Stop a page that runs the model, saying why, for a run whose model only its own code can build (a
    ``Recorder`` run of a CNN, an MLP, ...): its masks and curves are shown elsewhere."""
    if loaded.is_vit:
        return
    st.info(f"{page} runs the model, and this run recorded a {loaded.model_config.name}: not a timm ViT/DeiT, so "
            "only its own code can build it. Its masks are on the Layer density, Mask evolution and Compare pages, "
            "its curves on the Runs page.", icon=":material/info:")
    st.stop()


def header(title: str, what: str = "", path: str | None = None) -> None:
    st.title(title)
    label = current_label() if path is None else {e.path: e.label for e in catalog.find_checkpoints()}.get(
        path, Path(path).name)
    st.caption(f"**{label}**" + (f" · {what}" if what else ""))


_CHOICE, _FOLLOWS = "_{}_choice", "_{}_follows"


def page_checkpoint(key: str) -> str | None:
    """A page's own checkpoint (e.g. the Heads page's), which follows the sidebar's until it is changed on
    the page, and a talk can seed apart from it. Kept outside the widget's state, which Streamlit drops
    when another page is shown. :func:`page_checkpoint_select` draws its widget."""
    sidebar = current_path()
    paths = [e.path for e in catalog.find_checkpoints()]
    choice, follows = _CHOICE.format(key), _FOLLOWS.format(key)
    if st.session_state.get(follows) != sidebar or st.session_state.get(choice) not in paths:
        st.session_state[choice], st.session_state[follows] = sidebar, sidebar
    return st.session_state[choice]


def page_checkpoint_select(key: str, label: str = "Checkpoint for this page") -> None:
    entries = catalog.find_checkpoints()
    labels = {e.path: e.label for e in entries}
    st.session_state[key] = st.session_state[_CHOICE.format(key)]
    st.selectbox(label, list(labels), key=key, format_func=lambda p: labels.get(p, Path(p).name),
                 on_change=lambda: st.session_state.__setitem__(_CHOICE.format(key), st.session_state[key]),
                 help="Follows the sidebar's checkpoint until you pick another one here.")


def controls(label: str = "Controls") -> AbstractContextManager:
    """Where a page's widgets go: inline normally, tucked into a closed expander in talk mode."""
    return st.expander(label, expanded=False) if talk_mode() else st.container()


def details(label: str, heading: bool = True) -> AbstractContextManager:
    """Tables, settings and raw numbers: behind a closed expander in talk mode (the first screen tells the
    story with a chart and a sentence), under a subheading (``heading``) otherwise."""
    if talk_mode():
        return st.expander(label, expanded=False)
    box = st.container()
    if heading:
        box.subheader(label)
    return box


def story_slot() -> Any:
    """Where the page's one sentence goes, computed from the data once it is known: call right under the
    header, then ``.markdown(sentence)`` (larger in talk mode)."""
    return st.container(key="story")


def show_figure(fig: go.Figure, key: str) -> None:
    """A plotly chart with its toolbar (the camera icon downloads a PNG)."""
    talk = talk_mode()
    if talk:
        plots.talk_layout(fig)
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=key, theme=None if talk else "streamlit")


@st.cache_resource(max_entries=512, show_spinner=False)
def _built(name: str, args: tuple, kwargs: tuple, talk: bool) -> go.Figure:
    builder = getattr(plots, name, None) or getattr(head_plots, name)
    fig = builder(*args, **dict(kwargs))
    return plots.talk_layout(fig) if talk else fig


def plot(name: str, *args: Any, key: str, **kwargs: Any) -> None:
    """Build ``plots.<name>(*args, **kwargs)`` (or ``head_plots.<name>``) and show it. Figures are cached by their inputs:
    plotly's validation makes building one cost 50-500 ms, re-sending a cached one ~1 ms. The
    cached object is shared, never mutated (Streamlit serialises a copy)."""
    talk = talk_mode()
    fig = _built(name, args, tuple(sorted(kwargs.items())), talk)
    # Streamlit's chart theme would override the larger talk-mode fonts: plain plotly styling then
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=key, theme=None if talk else "streamlit")


def show_table(df: pd.DataFrame, name: str, key: str, height: int | None = None, talk_rows: int = TALK_TABLE_ROWS,
               **kwargs: Any) -> None:
    """A table and its CSV download button. In talk mode an HTML table (readable from the back row:
    its font scales with the talk styles) of the first ``talk_rows`` rows (0: only the CSV button, for
    raw tables a room cannot read anyway); the CSV holds them all."""
    if talk_mode():
        if talk_rows > 0:
            st.table(tables.readable(df.head(talk_rows)), hide_index=True)
        if len(df) > talk_rows:
            st.caption(f"{f'First {talk_rows} of' if talk_rows else 'All'} {len(df)} rows in the CSV.")
    else:
        st.dataframe(tables.readable(df), hide_index=True, height=height or "auto", **kwargs)
    st.download_button("Download CSV", tables.renamed(df).to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv",
                       key=f"csv_{key}", icon=":material/download:", on_click="ignore")


def keep_valid(key: str, options: Sequence[Any], default: Any = None) -> None:
    """Before a widget whose options depend on the checkpoint: make sure its state is one of the
    options (another checkpoint may have fewer layers or snapshots), else set ``default`` (or the
    first option). Widgets then get no ``value=``/``index=``, so their state alone decides."""
    value = st.session_state.get(key)
    valid = (all(v in options for v in value) if isinstance(value, tuple) else value in options)
    if key not in st.session_state or not valid:
        st.session_state[key] = default if default is not None else options[0]


def guard(fn: Callable[[], None], what: str) -> None:
    """Run one section of a page; a bad input in it becomes a one-line message, the rest still shows."""
    try:
        fn()
    except SviteError as err:
        st.warning(f"{what}: {err}")


def next_page_footer(current: str) -> None:
    """Talk mode: a link to the next stop of the talk path."""
    path = talk_path()
    if not talk_mode() or current not in path:
        return
    i = path.index(current)
    st.divider()
    st.caption(f"Talk path · {i + 1} of {len(path)}")
    if i + 1 < len(path):
        nxt = path[i + 1]
        page = _PAGE_OBJECTS.get(nxt)
        title = dict((k, t) for k, t, _ in PAGES)[nxt]
        if page is not None:
            st.page_link(page, label=f"Next: {title} →", icon=":material/arrow_forward:")
