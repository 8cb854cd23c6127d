"""config.json's entries, type-checked: a truncated or hand-edited record is named in one line
(`config.json: flags.epochs is "abc"; expected int`), never a traceback from deep inside a stage.

    problems(obj)   [(entry, message)], the first problem of each top-level entry of config.json
    sha256(data)    the hex digest the record keeps of keep.npy and labels.npy ("files")
    json_schema()   the same rules as a JSON Schema: docs/run_directory.schema.json, for readers
                    of run directories outside lira (tests/test_schema.py keeps it in sync)

The flags are checked against the field types of lira.config's dataclasses, so a new flag is
checked without a line here; the other entries are those the stages write (lira.run.records).
"""

from __future__ import annotations

import hashlib
import json
import types
import typing

from lira.config import DataConfig, ModelConfig, TrainingConfig, fields_of

_KINDS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": (lambda v: isinstance(v, str)),
    "bool": (lambda v: isinstance(v, bool)),
    "dict": (lambda v: isinstance(v, dict)),
    "list": (lambda v: isinstance(v, list)),
}

# Top-level entries besides "flags": (kind, may be null, {key: kind} checked where present).
_ENTRIES = {
    "data": ("dict", False, {"num_examples": "int", "num_classes": "int", "input_shape": "list",
                             "fingerprint": "str"}),
    "versions": ("dict", False, {}),
    "git_commit": ("str", True, {}),
    "inference": ("dict", True, {"queries": "int"}),
    "whitebox": ("dict", True, {"queries": "int", "layers": "list", "features": "int"}),
    "dp": ("dict", True, {"noise_multiplier": "float", "epsilon": "float", "delta": "float"}),
    "files": ("dict", True, {}),
    "source": ("str", False, {}),
    "models": ("dict", True, {"count": "int"}),
}  # fmt: skip


def problems(obj) -> list[tuple[str, str]]:
    """[(entry, 'entry.key is VALUE; expected KIND')] of a parsed config.json, one per top-level
    entry that is not what the stages wrote. Entries lira does not know are not checked (a later
    version's record stays readable)."""
    if not isinstance(obj, dict):
        return [("", f"the file holds {_show(obj)}; expected a JSON object")]
    out = []
    if "flags" in obj:
        problem = _flags_problem(obj["flags"])
        if problem:
            out.append(("flags", problem))
    for entry, (kind, nullable, keys) in _ENTRIES.items():
        if entry not in obj or (nullable and obj[entry] is None):
            continue
        value = obj[entry]
        if not _KINDS[kind](value):
            out.append((entry, f"{entry} is {_show(value)}; expected {kind}"))
            continue
        if entry == "files":
            keys = dict.fromkeys(value, "str")
        for key, key_kind in keys.items():
            if key in value and not _KINDS[key_kind](value[key]):
                out.append((entry, f"{entry}.{key} is {_show(value[key])}; expected {key_kind}"))
                break
    return out


def _flags_problem(flags) -> str | None:
    if not isinstance(flags, dict):
        return f"flags is {_show(flags)}; expected a JSON object"
    for name, (kind, nullable) in _flag_kinds().items():
        if name not in flags or (nullable and flags[name] is None):
            continue
        check = _KINDS.get(kind)
        if check is not None and not check(flags[name]):
            return f"flags.{name} is {_show(flags[name])}; expected {kind}{' or null' if nullable else ''}"
    return None


def _flag_kinds() -> dict[str, tuple[str, bool]]:
    """{flag: (kind, may be null)} from the Config sections' annotations ('int | None' ...)."""
    out = {}
    for section in (DataConfig, ModelConfig, TrainingConfig):
        for name, hint in typing.get_type_hints(section).items():
            args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
            nullable = type(None) in args
            base = next((a for a in args if a is not type(None)), hint)
            base = typing.get_origin(base) or base  # list[str] -> list
            out[name] = (getattr(base, "__name__", str(base)), nullable)
    return out


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "dict": "object",
               "list": "array"}  # fmt: skip
_DESCRIPTIONS = {
    "flags": "The lira.config.Config the models were trained with, by flag name (absent for imported runs).",
    "data": "The audit pool's facts: num_examples (N), num_classes (C), input_shape, fingerprint (sha256 of the "
    "arrays as loaded).",
    "versions": "Library versions, backend and devices of the training run.",
    "git_commit": "The lira commit that trained the models.",
    "inference": "Written by the query stage: queries (Q), the views per example in logits/NNNNN.npy [N, Q, C].",
    "whitebox": "Written by the white-box query stage: queries, layers (names), features (F).",
    "dp": "DP-SGD runs: the accounted guarantee (epsilon, delta, noise_multiplier, ...).",
    "files": "sha256 of keep.npy and labels.npy as written; checked whenever they are read.",
    "source": '"lira" (trained by the train stage) or "external" (logits imported: experiments/import_logits.py).',
    "models": "Imported runs: count (M), description (what the user stated), converted (conversions applied).",
}


def json_schema() -> dict:
    """config.json's rules (those `problems` checks) as a JSON Schema (draft 2020-12)."""
    flags = {
        name: {
            "type": [_JSON_TYPES[kind], "null"] if nullable else _JSON_TYPES[kind],
            "description": help_text,
        }
        for name, (kind, nullable), help_text in _flag_rows()
        if kind in _JSON_TYPES
    }
    properties = {"flags": {"type": "object", "properties": flags, "description": _DESCRIPTIONS["flags"]}}
    for entry, (kind, nullable, keys) in _ENTRIES.items():
        schema = {"type": [_JSON_TYPES[kind], "null"] if nullable else _JSON_TYPES[kind]}
        if entry == "files":
            schema["additionalProperties"] = {"type": "string"}
        elif keys:
            schema["properties"] = {key: {"type": _JSON_TYPES[key_kind]} for key, key_kind in keys.items()}
        properties[entry] = {**schema, "description": _DESCRIPTIONS[entry]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "config.json of a lira run directory",
        "description": "Generated from lira/run/record_types.py (python -m lira.run.record_types); entries "
        "not listed are allowed (a later lira's).",
        "type": "object",
        "properties": properties,
    }


def _flag_rows():

    kinds = _flag_kinds()
    for section in (DataConfig, ModelConfig, TrainingConfig):
        for name, f in fields_of(section).items():
            yield name, kinds[name], f.metadata["help"]


if __name__ == "__main__":  # writes docs/run_directory.schema.json
    from pathlib import Path

    target = Path(__file__).resolve().parents[2] / "docs" / "run_directory.schema.json"
    target.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"Wrote {target}")
