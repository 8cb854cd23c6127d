"""Every notebook runs top to bottom on a tiny real run (trained, queried 18 times) and saves
its figures; the committed notebooks are read, never written."""

import importlib.util

import nbformat
import pytest
from helpers import tiny_image_run_config

from lira import notebook
from lira.config import QueryConfig
from lira.stages import query, train

# experiments/notebooks.py, the notebooks' executor, loaded as a module (experiments/ holds scripts).
_spec = importlib.util.spec_from_file_location(
    "notebook_runner", notebook.REPO_ROOT / "experiments" / "notebooks.py"
)
NOTEBOOK_RUNNER = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(NOTEBOOK_RUNNER)

NOTEBOOKS = notebook.REPO_ROOT / "notebooks"
FIGURES = {
    "attack_comparison": ["attack_comparison_roc.png"],
    "num_shadows": ["num_shadows.png"],
    "queries": ["queries.png"],
    "score_distributions": ["score_distributions.png", "most_exposed.png"],
}


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """M = 8 cnn-tiny models on 96 uint8 8x8 colour images of 4 classes, 2 epochs, Q = 18."""
    root = tmp_path_factory.mktemp("tiny_run")
    run_config = tiny_image_run_config(root, num_models=8, models_per_step=8, augment="weak")
    train.train(root / "run", run_config, progress=False)
    query.query(root / "run", QueryConfig(queries=18, batch_size=96), progress=False)
    return root / "run"


def test_notebooks_open_with_the_command_and_read_the_run_through_lira():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(
        [*FIGURES, "dp_audit", "audit_your_model"]
    )
    for name, figures in FIGURES.items():
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        first = notebook.cells[0]
        assert first.cell_type == "markdown" and "python experiments/reproduce.py --scale=cpu" in first.source
        assert "python experiments/inference.py --logdir=exp/c10_cpu\n" in first.source  # as trained
        assert "Carlini et al. 2022" in first.source
        assert "it reads the demo run `exp/demo` instead" in first.source  # lira.notebook.logdir_from_env
        assert notebook.metadata.kernelspec.name == "python3"
        code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
        assert "notebook.logdir_from_env()" in code and "notebook.num_targets_from_env(" in code
        for figure in figures:
            assert f'notebook.save_figure(fig, "{figure}")' in code


@pytest.mark.parametrize("name", sorted(FIGURES))
@pytest.mark.slow
def test_notebook_runs_and_saves_its_figures(name, logdir, tmp_path, monkeypatch):
    monkeypatch.setenv("LIRA_NUM_TARGETS", "3")
    path = NOTEBOOKS / f"{name}.ipynb"
    committed = path.read_bytes()
    notebook = NOTEBOOK_RUNNER.execute_notebook(path, logdir, figures=tmp_path)
    assert path.read_bytes() == committed
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FIGURES[name])
    for figure in FIGURES[name]:
        assert (tmp_path / figure).read_bytes().startswith(b"\x89PNG")
    shown = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(shown) == len(FIGURES[name])  # every saved figure is also shown inline
    text = "\n".join(
        str(output.get("data", {}).get("text/plain", output.get("text", ""))) for output in outputs
    )
    assert "M = 8 models" in text and "Q = 18 queries" in text  # studies.describe of the tiny run
    tables = "\n".join(output.get("data", {}).get("text/markdown", "") for output in outputs)
    if name == "num_shadows":
        assert "| attack \\ num_shadows_used | 1 | 2 | 4 | 7 |" in tables and "| lira_online |" in tables
    if name == "queries":
        assert "| attack \\ queries | 1 | 2 | 18 |" in tables
    if name == "attack_comparison":
        assert "| shokri |" in tables and "3 targets pooled" in tables
        assert "| lira_online_student | lira_online |" in tables and "paired 95% verdict" in tables


@pytest.fixture(scope="module")
def dp_sweep_root(tmp_path_factory):
    """experiments/dp_audit.py's layout in miniature: the tiny run ordinarily and with DP-SGD,
    12 canaries, each queried once and attacked."""
    from lira import config
    from lira.stages import attack

    root = tmp_path_factory.mktemp("dp_sweep")
    base = tiny_image_run_config(root, num_models=8, models_per_step=8, augment="none", canaries=12)
    for name, noise in (("noise_none", None), ("noise_1", 1.0)):
        train.train(root / name, base.replace(dp_noise_multiplier=noise), progress=False)
        query.query(root / name, QueryConfig(queries=1), progress=False)
        attack.attack(
            root / name, config.AttackConfig(attacks=["loss", "lira_offline"], num_targets=8, bootstrap=0)
        )
    return root


@pytest.mark.slow
def test_dp_audit_notebook_runs_on_a_sweep(dp_sweep_root, tmp_path):
    path = NOTEBOOKS / "dp_audit.ipynb"
    first = nbformat.read(path, as_version=4).cells[0]
    assert "python experiments/dp_audit.py --root=exp/dp_mnist" in first.source
    notebook = NOTEBOOK_RUNNER.execute_notebook(path, dp_sweep_root, figures=tmp_path)
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert (tmp_path / "dp_audit.png").read_bytes().startswith(b"\x89PNG")
    tables = "\n".join(output.get("data", {}).get("text/markdown", "") for output in outputs)
    assert "| noise_none | 0 |" in tables and "inf (no DP)" in tables and "| noise_1 | 1 |" in tables


@pytest.mark.slow
def test_audit_your_model_notebook_audits_models_trained_elsewhere(tmp_path, monkeypatch):
    """The worked example for models lira did not train: scikit-learn MLPs through lira.api."""
    monkeypatch.setenv("LIRA_NUM_MODELS", "6")
    path = NOTEBOOKS / "audit_your_model.ipynb"
    committed = path.read_bytes()
    notebook = NOTEBOOK_RUNNER.execute_notebook(path, tmp_path, figures=tmp_path / "figures")
    assert path.read_bytes() == committed
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert (tmp_path / "figures" / "audit_your_model_roc.png").read_bytes().startswith(b"\x89PNG")
    tables = "\n".join(output.get("data", {}).get("text/markdown", "") for output in outputs)
    assert "| lira_online |" in tables and "| rmia_online |" in tables
    text = "\n".join(str(output.get("text", "")) for output in outputs)
    assert "logits (6, 1797, 10), keep (6, 1797), labels (1797,)" in text
    assert "rmia_online - lira_online" in text
