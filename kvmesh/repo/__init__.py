"""Triton model repositories for kvmesh's engines: a typed spec (spec.py), rendered into
config.pbtxt + model.py (render.py), and checked (check.py)."""
