"""The tensors every kvmesh engine model exposes, by role: the contract between the gateway and
the models, whatever the engine (the gateway never needs to know which engine runs). The names
are kvmesh/engine_wire.py's, which both sides import."""

from __future__ import annotations

from dataclasses import dataclass

from kvmesh import engine_wire as wire
from kvmesh.repo.spec import Engine, Role
from kvmesh.sampling import SamplingParams


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's DataType enum name, e.g. "TYPE_INT32"
    dims: tuple[int, ...]
    optional: bool = False
    comment: str = ""


INPUTS = (
    TensorSpec(wire.INPUT_IDS, "TYPE_INT32", (-1,), comment="the prompt's token ids"),
    TensorSpec(
        wire.SAMPLING_PARAMS,
        "TYPE_STRING",
        (1,),
        optional=True,
        comment="JSON: " + ", ".join(SamplingParams.__struct_fields__),
    ),
    TensorSpec(
        wire.MUX_REQUESTS,
        "TYPE_STRING",
        (1,),
        optional=True,
        comment="msgpack: several requests sent on a mux as one (docs/mux.md)",
    ),
)
KV_TRANSFER_IN = TensorSpec(
    wire.KV_TRANSFER_PARAMS,
    "TYPE_STRING",
    (1,),
    optional=True,
    comment="JSON from a prefill instance's response; required on decode instances ({} = prefill locally)",
)
OUTPUTS = (
    TensorSpec(wire.OUTPUT_IDS, "TYPE_INT32", (-1,), comment="new tokens since the previous response"),
    TensorSpec(wire.FINISH_REASON, "TYPE_STRING", (1,), comment='on the last response: "stop", "length" or "abort"'),
    TensorSpec(wire.PROMPT_TOKENS, "TYPE_INT32", (1,)),
    TensorSpec(wire.CACHED_TOKENS, "TYPE_INT32", (1,), comment="prompt tokens served from the engine's prefix cache"),
    TensorSpec(
        wire.MUX_DELTAS,
        "TYPE_STRING",
        (1,),
        comment="JSON: a batch of several requests' deltas, on a mux's stream (docs/mux.md)",
    ),
)
KV_TRANSFER_OUT = TensorSpec(
    wire.KV_TRANSFER_PARAMS,
    "TYPE_STRING",
    (1,),
    comment="JSON on the last response: what a decode instance needs to fetch this request's KV",
)

# The class each engine's model.py hands Triton to (module, class).
ENGINE_CLASS = {
    Engine.VLLM: ("engines.vllm_engine", "VllmEngine"),
    Engine.TENSORRTLLM: ("engines.trtllm.engine", "TrtllmEngine"),
    Engine.SIM: ("engines.sim.engine", "SimEngine"),
}


def inputs(role: Role) -> tuple[TensorSpec, ...]:
    return INPUTS + ((KV_TRANSFER_IN,) if role == Role.DECODE else ())


def outputs(role: Role) -> tuple[TensorSpec, ...]:
    return OUTPUTS + ((KV_TRANSFER_OUT,) if role == Role.PREFILL else ())


def engine_block_size(engine_args: dict) -> int | None:
    """The KV block size the engine arguments set: vLLM's and the simulator's `block_size`,
    TensorRT-LLM's `kv_cache_config.tokens_per_block`."""
    return engine_args.get("block_size") or (engine_args.get("kv_cache_config") or {}).get("tokens_per_block")
