"""The package installs: the wheel holds the whole library and the explorer (pages included), and, installed
into a throw-away environment with no source tree on its path, every module imports, a tiny run trains and
``svite app`` starts and answers HTTP, its pages running from the install.

The throw-away environment reuses this environment's packages (a ``.pth`` line naming its site-packages,
written after the wheel is installed), so nothing is downloaded: only the wheel is installed, ``--no-deps``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: modules that run when imported (the command, the app's entry script): found, not imported
SCRIPTS = {"sparsity_core.__main__", "app.main"}


def _wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    wheels = list(out.glob("svite_explorer-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _sources() -> set[str]:
    """Every module of the library and the app as the wheel must hold them (pages/ goes to app/pages/)."""
    found = {p.relative_to(ROOT).as_posix() for d in ("sparsity_core", "app") for p in (ROOT / d).rglob("*.py")}
    return found | {f"app/pages/{p.name}" for p in (ROOT / "pages").glob("*.py")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return _wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_module_and_the_svite_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_sources() - names)
    assert not missing, f"not in the wheel: {missing[:10]}"
    assert not {n for n in names if n.startswith(("tests/", "scripts/", "benchmarks/", "examples/", "pages/"))}
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "svite = sparsity_core.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(env_python: Path, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SVITE_RUNS_DIR", "SVITE_CHECKPOINTS_DIR")}
    return subprocess.run([str(env_python), *args], cwd=cwd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_the_installed_package_imports_trains_and_serves_the_app(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    site = Path(_run(python, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (site / "_reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, timm, streamlit...
    work = tmp_path / "elsewhere"
    work.mkdir()
    modules = sorted(p[:-3].replace("/", ".").removesuffix(".__init__") for p in _sources())
    code = ("import importlib, importlib.util, sparsity_core, app, sys\n"
            f"assert sparsity_core.__file__.startswith({str(venv)!r}), sparsity_core.__file__\n"
            f"assert {str(ROOT)!r} not in [p.rstrip('/') for p in sys.path], sys.path\n"
            f"assert app.__file__.startswith({str(venv)!r}), app.__file__\n"
            f"for m in {[m for m in modules if not m.startswith('app.pages') and m not in SCRIPTS]!r}:\n"
            "    importlib.import_module(m)\n"
            f"for m in {sorted(SCRIPTS)!r}:  # scripts: found, run below (svite, the app)\n"
            "    assert importlib.util.find_spec(m) is not None, m\n"
            "print('imported', len(sys.modules))")
    done = _run(python, ["-c", code], work)
    assert done.returncode == 0 and done.stdout.startswith("imported"), done.stderr[-2000:]
    svite = venv / "bin" / "svite"
    trained = subprocess.run([str(svite), "train", "--out", "runs/tiny_s0", "--depth", "1", "--embed-dim", "24",
                              "--num-heads", "2", "--train-size", "64", "--val-size", "32", "--batch-size", "32",
                              "--epochs", "1", "--method", "svite", "--quiet"], cwd=work, capture_output=True,
                             text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (work / "runs" / "tiny_s0" / "checkpoint.safetensors").is_file()
    port = _free_port()
    app = subprocess.Popen([str(svite), "app", "--runs", "runs", "--port", str(port)], cwd=work,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, answer = time.time() + 180, ""
        while time.time() < deadline and not answer:
            assert app.poll() is None, app.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=5) as r:
                    answer = r.read().decode()
            except OSError:
                time.sleep(1)
        assert answer == "ok"
        with urllib.request.urlopen(f"http://localhost:{port}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        os.killpg(app.pid, 15)
        app.wait(timeout=60)
    page = ("import app, pathlib; from streamlit.testing.v1 import AppTest\n"
            "main = pathlib.Path(app.__file__).parent / 'main.py'\n"
            "at = AppTest.from_file(str(main), default_timeout=120); at.switch_page('pages/runs.py'); at.run()\n"
            "assert not at.exception, [e.value for e in at.exception]\n"
            "print(at.dataframe[0].value['run'].tolist())")
    shown = subprocess.run([str(python), "-c", page], cwd=work, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "SVITE_RUNS_DIR": str(work / "runs"), "PYTHONPATH": ""})
    assert shown.returncode == 0 and "tiny_s0" in shown.stdout, shown.stderr[-2000:]


def test_svite_app_refuses_bad_flags_in_one_line(tmp_path, capsys):
    from sparsity_core.cli import explorer_script, main

    (tmp_path / "file").write_text("x")
    assert main(["app", "--runs", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip() == f"svite app: error: --runs {tmp_path / 'file'}: not a folder"
    assert main(["app", "--port", "0"]) == 2
    assert "--port 0: not a port number" in capsys.readouterr().err
    assert explorer_script() == ROOT / "app" / "main.py"  # the checkout's app, found without importing it
