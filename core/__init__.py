"""covisit core: events, co-visitation model, Numba kernels, snapshots, offline evaluation (no gRPC here)."""
