"""The native API's request for a greedy answer of exactly `max_tokens` tokens: what the
greedy-equality checks compare across meshes."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from kvmesh.v1 import inference_pb2


def request(model: str, ids: list[int], max_tokens: int) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=model,
        token_ids=inference_pb2.TokenIds(ids=ids),
        sampling=inference_pb2.SamplingParams(
            max_tokens=wrappers_pb2.UInt32Value(value=max_tokens),
            temperature=wrappers_pb2.FloatValue(value=0.0),
            ignore_eos=True,
        ),
    )
