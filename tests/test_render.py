"""docs/render.py: the README's and the docs' measured figures match the JSON that holds them, and
the README's layout names every module and every doc, so neither can drift unnoticed."""

import importlib.util
import json
import re
import shutil

import pytest
from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("render", REPO_ROOT / "docs" / "render.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)


def test_every_rendered_block_is_in_sync_with_its_json():
    assert render.out_of_sync(REPO_ROOT) == [], "run: python docs/render.py"


def test_every_renderer_is_used_and_every_block_has_a_renderer():
    used = {name for path in render.markdown_files(REPO_ROOT) for name in render.blocks(path.read_text())}
    assert used == set(render.RENDERERS)


def _copy_readme_and_sources(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    (tmp_path / "README.md").write_text(readme)
    for name in render.blocks(readme):
        for source in render.RENDERERS[name][0]:
            (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / source, tmp_path / source)
    return tmp_path


def test_a_changed_json_is_out_of_sync_until_rendered(tmp_path):
    root = _copy_readme_and_sources(tmp_path)
    assert render.out_of_sync(root) == []
    bench_path = root / "docs" / "bench" / "bench_cpu.json"
    bench = json.loads(bench_path.read_text())
    default = next(c for c in bench["cases"] if c["name"] == bench["ratios"]["mlp"]["default"])
    default["model_examples_per_s"] = 123456.0
    bench_path.write_text(json.dumps(bench))

    assert render.out_of_sync(root) == ["README.md: bench_cpu_default"]
    assert render.main(["--check", f"--root={root}"]) == 1
    assert "123,456" not in (root / "README.md").read_text()

    assert render.rewrite(root) == ["README.md"]
    assert "123,456" in (root / "README.md").read_text()
    assert render.out_of_sync(root) == [] and render.main(["--check", f"--root={root}"]) == 0


def test_a_hand_edited_block_is_out_of_sync(tmp_path):
    root = _copy_readme_and_sources(tmp_path)
    readme = (root / "README.md").read_text()
    edited = readme.replace("| lira_online |", "| lira_online (edited) |", 1)
    assert edited != readme
    (root / "README.md").write_text(edited)
    assert render.out_of_sync(root) == ["README.md: demo"]


def test_an_unknown_block_is_reported(tmp_path):
    (tmp_path / "README.md").write_text("<!-- render:no_such_table -->\n<!-- /render -->\n")
    assert render.out_of_sync(tmp_path) == ["README.md: no_such_table (no such block in docs/render.py)"]
    with pytest.raises(KeyError, match="no_such_table"):
        render.rewrite(tmp_path)


def _layout() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    return readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def _bullet(layout: str, folder: str) -> str:
    """The layout's bullet that starts with `folder`, e.g. "- `lira/training/`: ..."."""
    bullets = [line for line in layout.splitlines() if line.startswith(f"- `{folder}`")]
    assert len(bullets) == 1, f"README's layout needs one bullet starting with `{folder}`"
    return bullets[0]


def test_the_layout_names_every_module_of_lira():
    layout = _layout()
    missing = []
    for path in sorted((REPO_ROOT / "lira").rglob("*.py")):
        relative = path.relative_to(REPO_ROOT)
        if path.name == "__init__.py":
            continue
        if len(relative.parts) == 2:  # lira/config.py: named by its path
            if f"`{relative.as_posix()}`" not in layout:
                missing.append(relative.as_posix())
        else:  # lira/training/step.py: `step.py` in the bullet of `lira/training/`
            folder = relative.parent.as_posix() + "/"
            rest = relative.relative_to(relative.parent).as_posix()
            if f"`{rest}`" not in _bullet(layout, folder):
                missing.append(relative.as_posix())
    assert missing == [], f"README's layout does not name {missing}"


def test_the_layout_names_every_doc():
    docs = _bullet(_layout(), "docs/")
    named = set(re.findall(r"`([\w./-]+)`", docs))
    missing = [
        f"docs/{path.name}" for path in sorted((REPO_ROOT / "docs").glob("*.md")) if path.name not in named
    ]
    assert missing == [], f"README's layout does not name {missing}"
