"""Engine adapters that run inside kvmesh's Triton Python-backend models.

`triton_models/*/1/model.py` only does Triton's lifecycle and tensor I/O; everything here is
importable and unit-tested without Triton.
"""
