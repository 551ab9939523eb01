"""covisit client: a typed wrapper over the generated gRPC stubs (no numba, no core)."""
