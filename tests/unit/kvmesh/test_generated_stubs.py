"""The Python stubs in kvmesh/v1 are exactly what scripts/gen_protos.py makes from protos/."""

import importlib.util

from tests import ROOT


def test_stubs_are_not_stale(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = {p.name: p.read_bytes() for p in gen.generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in (ROOT / "kvmesh" / "v1").iterdir() if p.is_file()}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, f"regenerate with `make protos`: {stale}"
