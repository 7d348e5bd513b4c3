"""Generated from protos/kvmesh/v1 by scripts/gen_protos.py."""
