"""kvmesh repo build / check: the shipped repository is the spec's rendering, and every kind of
mistake in a spec or a config.pbtxt is reported with its file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmesh.cli.app import app
from kvmesh.repo import check, render, spec
from tests import ROOT

SHIPPED = ROOT / "triton_models"
SPEC = SHIPPED / "repository.toml"


@pytest.fixture
def built(tmp_path) -> Path:
    render.write(spec.load(SPEC), SPEC.name, tmp_path)
    return tmp_path


def test_shipped_repository_is_the_rendering_of_its_spec(built):
    expected = {p.relative_to(built): p.read_text() for p in built.rglob("*") if p.is_file()}
    shipped = {
        p.relative_to(SHIPPED): p.read_text()
        for p in SHIPPED.rglob("*")
        if p.is_file() and p != SPEC and "__pycache__" not in p.parts
    }
    assert sorted(shipped) == sorted(expected), "models in triton_models/ differ from repository.toml"
    drifted = [str(path) for path, text in expected.items() if shipped[path] != text]
    assert not drifted, f"regenerate: kvmesh repo build {SPEC.relative_to(ROOT)} --out triton_models ({drifted})"


def test_shipped_repository_checks_clean():
    assert check.check_repository(SHIPPED) == []


def test_roles_get_their_engine_arguments():
    models = {m.name: m for m in spec.load(SPEC).models}
    assert models["vllm_prefill"].full_engine_args()["kv_transfer_config"]["kv_role"] == "kv_producer"
    assert models["vllm_decode"].full_engine_args()["kv_transfer_config"]["kv_role"] == "kv_consumer"
    assert "kv_transfer_config" not in models["vllm"].full_engine_args()
    context = models["trtllm_prefill"].full_engine_args()
    assert context["cache_transceiver_config"]["backend"] == "NIXL" and context["disable_overlap_scheduler"]
    assert context["kv_cache_config"]["tokens_per_block"] == 32


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


BROKEN = [
    # (model, file, old, new, expected words in the problem)
    ("vllm", "config.pbtxt", "decoupled: true", "decoupled: false", "vllm/config.pbtxt: model_transaction_policy"),
    ("vllm", "config.pbtxt", 'backend: "python"', 'backend: "vllm"', "vllm/config.pbtxt: backend"),
    ("vllm", "config.pbtxt", "TYPE_INT32", "TYPE_INT64", "input.input_ids.data_type: TYPE_INT64, want TYPE_INT32"),
    ("vllm", "config.pbtxt", 'name: "sampling_params"', 'name: "sampling"', "input.sampling_params: missing"),
    ("vllm", "config.pbtxt", 'string_value: "aggregated"', 'string_value: "both"', "role='both'"),
    ("vllm", "config.pbtxt", 'string_value: "128"', 'string_value: "64"', "parameters.kv_block_size: '64'"),
    ("vllm", "config.pbtxt", "instance_group {", "instance_group {{", "vllm/config.pbtxt: (syntax)"),
    ("vllm_prefill", "config.pbtxt", "kv_producer", "kv_consumer", "role prefill needs kv_role 'kv_producer'"),
    ("vllm_decode", "config.pbtxt", 'name: "kv_transfer_params"', 'name: "kv_params"', "input.kv_transfer_params"),
    ("trtllm_prefill", "config.pbtxt", "disable_overlap_scheduler\\\": true", "disable_overlap_scheduler\\\": false",
     "needs disable_overlap_scheduler"),
    ("sim", "1/model.py", "TritonPythonModel = entry_point(pb_utils)", "class TritonPythonModel: pass",
     "sim/1/model.py: (entry point)"),
]  # fmt: skip


@pytest.mark.parametrize("model, file, old, new, words", BROKEN)
def test_a_broken_model_is_reported_with_file_and_field(built, model, file, old, new, words):
    edit(built / model / file, old, new)
    problems = [str(p) for p in check.check_repository(built)]
    assert any(words in p for p in problems), problems


def test_a_prefill_model_without_its_decode_pair(built):
    shutil.rmtree(built / "vllm_decode")
    problems = [str(p) for p in check.check_repository(built)]
    assert any("vllm_prefill: role: prefill with no decode model" in p for p in problems), problems


@pytest.mark.parametrize(
    "toml, words",
    [
        (
            '[[models]]\nname = "a"\nengine = "sim"\nkv_transfer = { connector = "sim" }\n',
            "prefill and decode roles only",
        ),
        ('[[models]]\nname = "a"\nengine = "vllm"\nengine_args = { block_size = 16 }\n', "engine_args.block_size"),
        ('[[models]]\nname = "a"\nengine = "vllm"\nkv_transfer = {}\n', "prefill and decode roles only"),
        ('[[models]]\nname = "a"\nengine = "onnx"\n', "models.0.engine"),
        ('[[models]]\nname = "a"\nengine = "sim"\n[[models]]\nname = "a"\nengine = "sim"\n', "unique: a"),
        ("[[models]\n", "not valid TOML"),
        ("models = []\n", "models"),
    ],
)
def test_bad_specs_name_the_file_and_field(tmp_path, toml, words):
    path = tmp_path / "spec.toml"
    path.write_text(toml)
    with pytest.raises(spec.SpecError, match="spec.toml: ") as e:
        spec.load(path)
    assert words in str(e.value)


def test_yaml_specs_render_like_toml(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("models:\n  - {name: p, engine: vllm, role: prefill}\n  - {name: d, engine: vllm, role: decode}\n")
    render.write(spec.load(path), path.name, tmp_path / "repo")
    assert check.check_repository(tmp_path / "repo") == []


def test_cli_exit_codes(built, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["repo", "check", str(built)]).exit_code == 0
    edit(built / "vllm" / "config.pbtxt", "decoupled: true", "decoupled: false")
    result = runner.invoke(app, ["repo", "check", str(built)])
    assert result.exit_code == 1 and "decoupled" in result.output
    out = tmp_path / "out"
    assert runner.invoke(app, ["repo", "build", str(SPEC), "--out", str(out)]).exit_code == 0
    assert check.check_repository(out) == []
    bad = tmp_path / "bad.toml"
    bad.write_text("models = 3\n")
    result = runner.invoke(app, ["repo", "build", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "bad.toml" in result.output
