"""lira/config.py and lira/cli.py: one declaration per hyperparameter, flags derived from it,
config.json read back typed, user errors in one line, and a package without side effects or
import cycles."""

import ast
import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from lira import cli, config, signals
from lira.run import layout, records

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
        (config.AttackConfig, {"audit_method": "x"}, "--audit_method=x: valid are one_run, clopper_pearson."),
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


def test_config_names_no_attack():
    from lira.attacks import ATTACKS, option_flags

    source = (ROOT / "lira" / "config.py").read_text()
    names = [*(name for name in ATTACKS if name != "loss"), *option_flags()]  # "loss" is also a word
    assert not [name for name in names if re.search(rf"\b{name}\b", source)]


def test_each_option_flag_is_declared_once_for_a_keyword_of_its_attacks():
    from lira.attacks import ATTACKS, option_flags

    flags_ = option_flags()
    for name, spec in ATTACKS.items():
        keywords = [option.keyword for option in spec.options]
        assert len(set(keywords)) == len(keywords), name
        assert set(keywords) <= set(list(inspect.signature(spec.fn).parameters)[1:]), name
        assert all(flags_[option.flag] is option for option in spec.options), name
    assert not set(flags_) & set(config.fields_of(config.AttackConfig))
    assert (
        flags_["rmia_gamma"] in ATTACKS["rmia_online"].options
        and flags_["rmia_gamma"] in ATTACKS["rmia_offline"].options
    )


def test_a_flag_two_attacks_declare_apart_is_refused(monkeypatch):
    from lira import attacks

    shared = attacks.ATTACKS["rmia_online"]
    twin = dataclasses.replace(shared, options=tuple(dataclasses.replace(o) for o in shared.options))
    monkeypatch.setitem(attacks.ATTACKS, "rmia_online", twin)
    with pytest.raises(AssertionError, match="redeclares --rmia_gamma"):
        attacks.option_flags()


def test_the_option_defaults_are_the_attack_functions_defaults():
    from lira.attacks import ATTACKS, options_from_flags

    for name, keywords in options_from_flags().items():
        parameters = inspect.signature(ATTACKS[name].fn).parameters
        for keyword, value in keywords.items():
            default = parameters[keyword].default
            assert value == (list(default) if isinstance(default, tuple) else default), (name, keyword)
    assert options_from_flags()["rmia_online"]["signal"] == signals.ProbabilitySignal().kind


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rmia_trim": 0.5}, "--rmia_trim must be in [0, 0.5), got 0.5."),
        ({"rmia_gamma": 0.0}, "--rmia_gamma must be > 0, got 0.0."),
        ({"rmia_offline_a": "x"}, "--rmia_offline_a must be a number in [0, 1] or 'auto', got x."),
        ({"rmia_num_population": -1}, "--rmia_num_population must be >= 0, got -1."),
        ({"shokri_classifier": "svm"}, "--shokri_classifier=svm: valid are mlp, logreg, sklearn_mlp, gbdt."),
        ({"nasr_inputs": []}, "--nasr_inputs=: choose from gradients, activations, loss, label."),
        ({"rmia_terms": 1.5}, "--rmia_terms must be an integer, got 1.5."),
        ({"lira_likelihood": "student_t"}, "Unknown attack options --lira_likelihood=student_t; valid: --"),
    ],
)
def test_a_bad_attack_option_names_the_flag_and_what_is_valid(values, message):
    from lira.attacks import options_from_flags

    with pytest.raises(ValueError) as error:
        options_from_flags(values)
    assert str(error.value).startswith(message)


def test_attack_script_help_lists_every_option_flag_with_its_default():
    from lira.attacks import option_flags

    result = _script("experiments/attack.py", "--help")
    described = {block.split(":")[0]: block for block in re.split(r"\n\s+--", result.stdout)}
    for flag, option in option_flags().items():
        default = ",".join(option.default) if option.kind is list else str(option.default)
        assert f"(default: '{default}')" in described.get(flag, ""), (flag, result.stdout[-2000:])


@pytest.mark.parametrize(
    ("script", "sections"),
    [
        ("experiments/train.py", (config.DataConfig, config.ModelConfig, config.TrainingConfig)),
        ("experiments/inference.py", (config.QueryConfig,)),
    ],
)
def test_stage_script_help_lists_every_config_flag(script, sections):
    result = _script(script, "--help")
    described = {block.split(":")[0] for block in re.split(r"\n\s+--(?:\[no\])?", result.stdout)}
    for section in sections:
        missing = [name for name in config.fields_of(section) if name not in described]
        assert not missing, (script, missing)


def test_attack_flags_come_from_the_attacks_options():
    from lira.attacks import options_from_flags

    values = flags.FlagValues()
    cli.define_flags(config.AttackConfig, flag_values=values)
    cli.define_attack_flags(flag_values=values)
    values(["prog", "--num_targets=2", "--rmia_offline_a=auto", "--nasr_inputs=loss"])
    attack_config = cli.section(config.AttackConfig, values)
    assert attack_config == config.AttackConfig(
        num_targets=2, options={"rmia_offline_a": "auto", "nasr_inputs": ["loss"]}
    )  # only the flags given: the others keep the attacks' defaults
    options = options_from_flags(attack_config.options)
    assert options["rmia_offline"]["offline_a"] == "auto" and "offline_a" not in options["rmia_online"]
    assert options["whitebox_nasr"] == {"use": ["loss"]}
    assert options["rmia_online"] == options_from_flags()["rmia_online"]
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--rmia_signal=cubic"])


def test_run_record_reads_what_older_runs_wrote(tmp_path):
    old = {"flags": {"dataset": "digits", "arch": "cnn32", "epochs": 2, "logdir": "x", "progress": False},
           "data": {"num_examples": 10}, "inference": {"queries": 18}}  # fmt: skip
    (tmp_path / layout.CONFIG).write_text(json.dumps(old))
    record = records.load_record(tmp_path)
    assert record.config.training.epochs == 2 and record.queries == 18 and record.git_commit is None
    records.save_record(tmp_path, record)
    assert records.load_record(tmp_path) == record


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
        (
            ["experiments/attack.py", "--logdir=/x", "--nasr_inputs=weights"],
            "attack.py: error: --nasr_inputs=weights: choose from gradients,",
        ),
    ],
)
@pytest.mark.slow
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
    from lira.run import views
    from lira.training import augment, layers

    assert layers.CONV_IMPLS == config.CONV_IMPLS
    for queries in config.QUERY_COUNTS:  # every allowed count has its views
        assert len(views.query_offsets(queries)) == queries
    assert set(config.AUGMENTS) == {"none", "mirror", "weak"} == set(augment.AUGMENTS)
