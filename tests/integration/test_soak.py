"""bench.soak's short version (#29): 5,000 requests at c=64 on a simulated mesh, half streaming,
every prompt new, 1% abandoned by their clients: every other request answered whole; after warm-up
Redis's key count and every process's open files stay flat, no service restarts, and the mesh's
own services' RSS grows < 5% (Triton's own allocator is judged over the long run, bench.soak's
100,000)."""

from bench import soak

OURS = ("gateway", "router", "kvindex", "worker")


def test_five_thousand_requests_lose_nothing_and_leak_nothing(real_meshes, tmp_path):
    real_meshes.stop()  # a mesh of real engines beside this one would share the two cores
    result = soak.main(["--requests", "5000", "--log-dir", str(tmp_path)])
    assert result["lost"] == 0, result["lost_examples"]
    assert result["answered"] + result["abandoned"] == 5000
    held = {k: v for k, v in result["verdicts"].items() if not k.startswith("RSS")}
    assert all(held.values()), held
    grown = {name: r["growth"] for name, r in result["rss"].items() if name.split()[0] in OURS}
    assert len(grown) >= 5 and all(g < soak.RSS_GROWTH for g in grown.values()), grown
