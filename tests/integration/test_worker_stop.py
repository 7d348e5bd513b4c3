"""A worker that stops (a planner's scale-down, Ctrl-C) fails no request: it leaves the registry,
lets what was routed to it finish, then stops Triton. Two of three simulated decode workers stop at
once under a load of disaggregated requests, as the planner's local connector stops them."""

import asyncio
import signal

import httpx

from kvmesh.cli.local_mesh import LocalMesh

BODY = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}


def test_workers_stopping_under_load_fail_no_request(tmp_path):
    pools = ("--disagg", "--prefill-workers", "1", "--decode-workers", "3", "--disagg-threshold", "1")
    mesh = LocalMesh.start(tmp_path, extra_args=("--engine", "sim", *pools), ready_timeout_s=300)
    try:
        mesh.wait_for_workers(4, timeout_s=120)
        before, across, failures = asyncio.run(load_while_stopping(mesh, stopping=2))
    finally:
        mesh.stop()
    # The load was real on both sides of the stop (not a count of requests: this machine's speed
    # moves 2x between runs; 96 in the 6 s was a slow one).
    assert before >= 10 and across >= 10, (before, across)
    assert failures == [], f"{len(failures)} failed, e.g. {failures[0]}"


async def load_while_stopping(mesh, stopping: int) -> tuple[int, int, list[str]]:
    """Returns the requests served before the stop, those served across it, and the failures."""
    served, failures, done, stopped = {False: 0, True: 0}, [], asyncio.Event(), asyncio.Event()

    async def client() -> None:
        async with httpx.AsyncClient(base_url=mesh.http, timeout=30) as http:
            while not done.is_set():
                reply = await http.post("/v1/chat/completions", json={"model": mesh.model, **BODY})
                if reply.status_code == 200:
                    served[stopped.is_set()] += 1
                else:
                    failures.append(reply.text)

    clients = [asyncio.create_task(client()) for _ in range(8)]
    # Not waits for a condition: the load runs 2 s before the stop and 4 s across it (the stop
    # itself takes ~1–2 s: the settle time, then the routed requests).
    await asyncio.sleep(2.0)
    decode = [p for p in mesh.service_processes("worker") if "sim_decode" in " ".join(p.cmdline())]
    for process in decode[:stopping]:
        process.send_signal(signal.SIGTERM)
    stopped.set()
    await asyncio.sleep(4.0)
    done.set()
    await asyncio.gather(*clients)
    return served[False], served[True], failures
