"""Executes notebooks top to bottom on a run directory, as `reproduce.py --notebooks` does.

    python experiments/notebooks.py --logdir=exp/c10_cpu --write notebooks/*.ipynb

Each notebook reads the run in $LIRA_LOGDIR and saves its figures to $LIRA_FIGURES
(lira.notebook.logdir_from_env, figures_from_env); --write saves it back with its outputs, to be
committed. Needs nbclient, nbformat and ipykernel (requirements-dev.txt).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from absl import flags

from lira import cli
from lira.notebook import resolve_path
from lira.run import layout

FLAGS = flags.FLAGS
flags.DEFINE_string("logdir", None, "Run directory the notebooks read.", required=True)
flags.DEFINE_string("figures", "docs/figures", "Where the notebooks save their figures.")
flags.DEFINE_bool("write", False, "Write each executed notebook back over itself, outputs included.")
flags.DEFINE_integer("timeout", 1800, "Seconds a cell may run.")
PACKAGES = ("nbformat", "nbclient", "ipykernel", "jupyter_client")


def execute_notebook(path: str | os.PathLike, logdir: str | os.PathLike, figures: str | os.PathLike | None = None,
                     output: str | os.PathLike | None = None, timeout: int = 1800):  # fmt: skip
    """Runs a notebook top to bottom on `logdir` (as $LIRA_LOGDIR, figures to $LIRA_FIGURES) in
    its own folder and returns it executed; writes it to `output` when given (the notebook itself,
    to commit its outputs). A failing cell raises nbclient's CellExecutionError.

    The kernel is this interpreter (sys.executable), whatever kernelspecs the machine has: a
    kernelspec named like the notebook's is written to a temporary folder and used alone, so a
    `python3` spec of some other Python cannot be picked up. Needs nbclient, nbformat, ipykernel.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    kernel_name = notebook.metadata.get("kernelspec", {}).get("name", "python3")
    env = {**os.environ, "LIRA_LOGDIR": str(resolve_path(logdir))}
    if figures is not None:
        env["LIRA_FIGURES"] = str(resolve_path(figures))
    with tempfile.TemporaryDirectory() as kernels:
        spec_dir = Path(kernels) / kernel_name
        spec_dir.mkdir()
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec = {"argv": argv, "display_name": "Python 3", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        manager = KernelManager(
            kernel_name=kernel_name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels])
        )
        client = NotebookClient(
            notebook, km=manager, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
        )
        # cleanup_kc: nbclient shuts down only kernels whose manager it made itself.
        client.execute(env=env, cleanup_kc=True)
    if output is not None:  # atomically: a kill mid-write must not truncate a committed notebook
        layout.atomic_write(Path(output), lambda f: nbformat.write(notebook, f), "w")
    return notebook


def main(argv):
    paths = argv[1:]
    if not paths:
        raise ValueError("Name the notebooks to execute, e.g. notebooks/*.ipynb.")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"No notebook {missing[0]}.")
    for path in paths:
        print(f"Executing {path} on {FLAGS.logdir}", flush=True)
        execute_notebook(path, FLAGS.logdir, FLAGS.figures, path if FLAGS.write else None, FLAGS.timeout)


if __name__ == "__main__":
    cli.run(main)
