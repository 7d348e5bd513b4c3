"""`kvmesh bench replay`: real workload traces against a running mesh."""
