"""`kvmesh repo check`: validate a Triton model repository of kvmesh engine models, reading each
config.pbtxt with Triton's own ModelConfig schema. Every problem names the file and the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from kvmesh.repo import interface
from kvmesh.repo.spec import Engine, Role

ENTRY_POINT = "TritonPythonModel = entry_point(pb_utils)"


@dataclass(frozen=True)
class Problem:
    file: Path
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


@dataclass(frozen=True)
class CheckedModel:
    name: str
    engine: Engine
    role: Role
    model: str
    block_size: int
    connector: str | None


def _parameter(config: mc.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else None


def _tensors(config_file: Path, kind: str, found, expected: tuple[interface.TensorSpec, ...]) -> list[Problem]:
    problems = []
    by_name = {t.name: t for t in found}
    for spec in expected:
        tensor = by_name.pop(spec.name, None)
        where = f"{kind}.{spec.name}"
        if tensor is None:
            problems.append(Problem(config_file, where, "missing"))
            continue
        if mc.DataType.Name(tensor.data_type) != spec.data_type:
            problems.append(
                Problem(
                    config_file, f"{where}.data_type", f"{mc.DataType.Name(tensor.data_type)}, want {spec.data_type}"
                )
            )
        if tuple(tensor.dims) != spec.dims:
            problems.append(Problem(config_file, f"{where}.dims", f"{list(tensor.dims)}, want {list(spec.dims)}"))
        if kind == "input" and tensor.optional != spec.optional:
            problems.append(Problem(config_file, f"{where}.optional", f"{tensor.optional}, want {spec.optional}"))
    for name in by_name:
        problems.append(
            Problem(config_file, f"{kind}.{name}", "not part of the engine model's interface for this role")
        )
    return problems


def _role_problems(file: Path, engine: Engine, role: Role, args: dict[str, Any]) -> tuple[list[Problem], str | None]:
    """Whether the engine arguments configure the role the parameters claim; and the connector."""
    if engine == Engine.SIM:  # every role; its KV "transfer" has no settings to get wrong
        return [], None if role == Role.AGGREGATED else "sim"
    if engine == Engine.VLLM:
        transfer = args.get("kv_transfer_config")
        want = {Role.PREFILL: "kv_producer", Role.DECODE: "kv_consumer"}.get(role)
        have = transfer.get("kv_role") if isinstance(transfer, dict) else None
        if have != want:
            what = f"kv_transfer_config.kv_role is {have!r}" if transfer else "there is no kv_transfer_config"
            return [Problem(file, "parameters.engine_args", f"role {role} needs kv_role {want!r}, but {what}")], None
        return [], transfer.get("kv_connector") if transfer else None
    transceiver = args.get("cache_transceiver_config")
    if (role == Role.AGGREGATED) != (transceiver is None):
        need = "no cache_transceiver_config" if role == Role.AGGREGATED else "a cache_transceiver_config"
        return [Problem(file, "parameters.engine_args", f"role {role} needs {need}")], None
    if role == Role.PREFILL and not args.get("disable_overlap_scheduler"):
        return [
            Problem(file, "parameters.engine_args", "a context-only instance needs disable_overlap_scheduler")
        ], None
    return [], transceiver.get("backend") if transceiver else None


def check_model(model_dir: Path) -> tuple[list[Problem], CheckedModel | None]:
    config_file = model_dir / "config.pbtxt"
    config = mc.ModelConfig()
    try:
        text_format.Parse(config_file.read_text(), config)
    except text_format.ParseError as e:
        return [Problem(config_file, "(syntax)", str(e))], None
    problems: list[Problem] = []
    if config.name and config.name != model_dir.name:
        problems.append(Problem(config_file, "name", f"{config.name!r} but the folder is {model_dir.name!r}"))
    if config.backend != "python":
        problems.append(Problem(config_file, "backend", f"{config.backend!r}, want 'python' (kvmesh's engine models)"))
    if not config.model_transaction_policy.decoupled:
        problems.append(Problem(config_file, "model_transaction_policy.decoupled", "must be true (tokens stream)"))
    if config.max_batch_size != 0:
        problems.append(Problem(config_file, "max_batch_size", "must be 0 (the engine batches, not Triton)"))
    if not config.instance_group or any(g.count < 1 for g in config.instance_group):
        problems.append(Problem(config_file, "instance_group", "needs at least one instance"))
    try:
        engine = Engine(_parameter(config, "engine"))
        role = Role(_parameter(config, "role"))
    except ValueError:
        engines, roles = ", ".join(Engine), ", ".join(Role)
        found = f"engine={_parameter(config, 'engine')!r}, role={_parameter(config, 'role')!r}"
        return [
            *problems,
            Problem(config_file, "parameters", f"{found}; want engine in {engines}, role in {roles}"),
        ], None
    try:
        args = json.loads(_parameter(config, "engine_args") or "")
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        return [*problems, Problem(config_file, "parameters.engine_args", "must be a JSON object")], None
    problems += _tensors(config_file, "input", config.input, interface.inputs(role))
    problems += _tensors(config_file, "output", config.output, interface.outputs(role))
    role_problems, connector = _role_problems(config_file, engine, role, args)
    problems += role_problems
    block_size = _parameter(config, "kv_block_size")
    engine_block = interface.engine_block_size(args)
    if block_size is None or not block_size.isdigit() or int(block_size) != engine_block:
        problems.append(
            Problem(config_file, "parameters.kv_block_size", f"{block_size!r} but the engine's is {engine_block!r}")
        )
    model_py = model_dir / "1" / "model.py"
    if not model_py.exists():
        problems.append(Problem(model_py, "(file)", "missing"))
    elif ENTRY_POINT not in model_py.read_text():
        problems.append(Problem(model_py, "(entry point)", f"not kvmesh's engine model ({ENTRY_POINT})"))
    checked = CheckedModel(model_dir.name, engine, role, str(args.get("model")), engine_block or 0, connector)
    return problems, checked


def _pairs(root: Path, models: list[CheckedModel]) -> list[Problem]:
    """Every prefill model has a decode model that can take its KV (same engine, model, block
    size and connector), and the other way round."""
    problems = []
    for m in models:
        if m.role == Role.AGGREGATED:
            continue
        other = Role.DECODE if m.role == Role.PREFILL else Role.PREFILL
        if not any(
            (o.role, o.engine, o.model, o.block_size, o.connector)
            == (other, m.engine, m.model, m.block_size, m.connector)
            for o in models
        ):
            problems.append(
                Problem(
                    root / m.name,
                    "role",
                    f"{m.role} with no {other} model of the same engine, model, block size and connector to pair with",
                )  # fmt: skip
            )
    return problems


def check_repository(root: Path) -> list[Problem]:
    if not root.is_dir():
        return [Problem(root, "(folder)", "not a directory")]
    model_dirs = sorted(p.parent for p in root.glob("*/config.pbtxt"))
    if not model_dirs:
        return [Problem(root, "(folder)", "no <model>/config.pbtxt inside")]
    problems, checked = [], []
    for model_dir in model_dirs:
        found, model = check_model(model_dir)
        problems += found
        if model:
            checked.append(model)
    return problems + _pairs(root, checked)
