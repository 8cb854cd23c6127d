"""lira/config.py and lira/cli.py: one declaration per hyperparameter, flags derived from it,
config.json read back typed, user errors in one line, and a package without side effects or
import cycles."""

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from lira import cli, config
from lira.run import layout

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    config.DataConfig,
    config.ModelConfig,
    config.TrainingConfig,
    config.QueryConfig,
    config.AttackConfig,
)


def test_flat_round_trip_and_replace():
    run = config.Config().replace(dataset="digits", arch="cnn32", epochs=3, lr=0.05)
    assert config.Config.from_flat(run.flat()) == run
    assert (run.data.dataset, run.model.arch, run.training.epochs, run.training.lr) == (
        "digits",
        "cnn32",
        3,
        0.05,
    )
    assert config.Config.from_flat({"epochs": 3, "logdir": "ignored"}).training.epochs == 3
    with pytest.raises(ValueError, match="Unknown config fields: nope"):
        run.replace(nope=1)


def test_field_names_are_unique_across_a_runs_sections():
    names = [f.name for section in (config.DataConfig, config.ModelConfig, config.TrainingConfig)
             for f in dataclasses.fields(section)]  # fmt: skip
    assert len(names) == len(set(names))


def test_result_differences_name_only_result_fields():
    before = config.Config()
    assert before.replace(eval_every=5, data_dir="/x", conv_impl="im2col").result_differences(before) == []
    changed = before.replace(epochs=7, arch="cnn32").result_differences(before)
    assert changed == ["--arch: 'wrn28-2' before, 'cnn32' now", "--epochs: 100 before, 7 now"]
    assert {"dataset", "arch", "epochs", "lr", "seed", "models_per_step"} <= set(config.result_fields())
    assert not {"data_dir", "conv_impl", "eval_every"} & set(config.result_fields())


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        (config.TrainingConfig, {"lr": 0}, "--lr must be > 0, got 0."),
        (config.TrainingConfig, {"augment": "strong"}, "--augment=strong: valid are none, mirror, weak."),
        (config.TrainingConfig, {"eval_every": -1}, "--eval_every must be >= 0"),
        (config.ModelConfig, {"conv_impl": "fft"}, "--conv_impl=fft: valid are xla, im2col."),
        (config.DataConfig, {"pool_size": 0}, "--pool_size must be >= 1, got 0."),
        (config.QueryConfig, {"queries": 3}, "--queries=3 is not supported; valid: 1, 2, 18, 162."),
        (config.AttackConfig, {"rmia_trim": 0.5}, "--rmia_trim must be in [0, 0.5), got 0.5."),
        (
            config.AttackConfig,
            {"rmia_offline_a": "x"},
            "--rmia_offline_a=x: give a number in [0, 1] or 'auto'.",
        ),
        (config.AttackConfig, {"shokri_classifier": "svm"}, "--shokri_classifier=svm: valid are"),
    ],
)
def test_validation_names_the_flag_and_what_is_valid(section, changes, message):
    section().validate()  # the defaults are valid
    with pytest.raises(ValueError) as error:
        section(**changes).validate()
    assert str(error.value).startswith(message)


def test_flags_come_from_the_config_fields():
    values = flags.FlagValues()
    cli.define_flags(*SECTIONS[:3], flag_values=values)
    values(["prog", "--epochs=7", "--arch=cnn32", "--conv_impl=im2col"])
    training = cli.section(config.TrainingConfig, values)
    assert training == config.TrainingConfig(epochs=7)
    assert cli.section(config.ModelConfig, values) == config.ModelConfig(arch="cnn32", conv_impl="im2col")
    for section in SECTIONS:
        for field in dataclasses.fields(section):
            assert field.metadata["help"], field.name
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--conv_impl=fft"])


def test_attack_options_reach_every_attack_that_takes_them():
    from lira.attacks import option_names

    options = config.AttackConfig(rmia_offline_a="auto", lira_likelihood="student_t").options()
    assert options["rmia_offline"]["offline_a"] == "auto" and "offline_a" not in options["rmia_online"]
    assert options["lira_offline"] == {"likelihood": "student_t"}
    for name, given in options.items():
        assert set(given) <= set(option_names(name)), name


def test_run_record_reads_what_older_runs_wrote(tmp_path):
    old = {"flags": {"dataset": "digits", "arch": "cnn32", "epochs": 2, "logdir": "x", "progress": False},
           "data": {"num_examples": 10}, "inference": {"queries": 18}}  # fmt: skip
    (tmp_path / layout.CONFIG).write_text(json.dumps(old))
    record = layout.load_record(tmp_path)
    assert record.config.training.epochs == 2 and record.queries == 18 and record.git_commit is None
    layout.save_record(tmp_path, record)
    assert layout.load_record(tmp_path) == record


def _script(*args, env=None):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    environment.pop("LIRA_TRACEBACK", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=environment)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["experiments/train.py", "--dataset=digits", "--epochs=0"],
            "train.py: error: --epochs must be >= 1, got 0.",
        ),
        (["experiments/train.py", "--epochs=many"], "train.py: error: flag --epochs=many"),
        (["experiments/train.py", "--arch=vgg", "--dataset=digits"], "train.py: error: Unknown --arch='vgg'"),
        (
            ["experiments/inference.py", "--logdir=/nonexistent"],
            "inference.py: error: /nonexistent/config.json",
        ),
        (["experiments/inference.py", "--logdir=/x", "--queries=5"], "inference.py: error: --queries=5"),
        (
            ["experiments/attack.py", "--logdir=/x", "--attacks=lira"],
            "attack.py: error: Unknown attacks ['lira']",
        ),
        (
            ["experiments/attack.py", "--logdir=/x", "--rmia_gamma=0"],
            "attack.py: error: --rmia_gamma must be > 0",
        ),
    ],
)
def test_user_errors_are_one_line_with_status_2(args, message):
    result = _script(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "libtpu" not in result.stderr + result.stdout


def test_importing_lira_leaves_the_environment_alone():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = "import os, lira, lira.metrics, lira.stages.train; assert 'XLA_FLAGS' not in os.environ"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def _imports(path: Path, package_root: Path) -> set[str]:
    """The lira and bench modules that a module imports (at any depth of the file)."""
    tree, found = ast.parse(path.read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                module_file = package_root / (candidate.replace(".", "/") + ".py")
                found.add(candidate if module_file.exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("lira", "bench")}


def test_no_import_cycles():
    modules = {}
    for path in [*ROOT.glob("lira/**/*.py"), *ROOT.glob("bench/*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {
        name: {m for m in _imports(path, ROOT) if m in modules and m != name}
        for name, path in modules.items()
    }
    # A package's __init__ is imported with any of its modules: from outside the package, an edge
    # to a module implies one to its package.
    for name in graph:
        parents = {m.rsplit(".", 1)[0] for m in graph[name] if "." in m}
        graph[name] |= {p for p in parents if p in modules and not name.startswith(p + ".")}
        graph[name].discard(name)
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_config_choices_are_the_modules_choices():
    from lira.attacks import lira_attacks, rmia, shokri
    from lira.training import augment, layers

    assert shokri.CLASSIFIERS == config.SHOKRI_CLASSIFIERS and rmia.AGGREGATIONS == config.RMIA_AGGREGATIONS
    assert lira_attacks.LIKELIHOODS == config.LIRA_LIKELIHOODS and layers.CONV_IMPLS == config.CONV_IMPLS
    for queries in config.QUERY_COUNTS:  # every allowed count has its views
        assert len(augment.query_offsets(queries)) == queries
    assert set(config.AUGMENTS) == {"none", "mirror", "weak"} == set(augment.AUGMENTS)
