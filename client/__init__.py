"""covisit client: a typed wrapper over the generated gRPC stubs (no numba, no core).

    from covisit.client import CovisitClient, Event

    with CovisitClient("localhost:50051", timeout=0.5) as client:
        client.record_events([Event("u1", "i1", "view", time.time())])
        recs = client.recommend_items(["i1"], k=5)

Failed calls raise ``grpc.RpcError`` unchanged (see ``covisit.client.client``).
"""

from covisit.client.client import CovisitClient
from covisit.client.types import (Alert, ArmFeedback, DriftStats, Event, Experiment, ExposureStats, Item, Metrics,
                                  ModelVersion, Promotion, Rebuild, Recommendations, RecommendedItem, Resume,
                                  Rollback, ShadowStats, SimilarItems, SloCheck, Status, VersionFeedback)

__all__ = ["Alert", "ArmFeedback", "CovisitClient", "DriftStats", "Event", "Experiment", "ExposureStats", "Item",
           "Metrics", "ModelVersion", "Promotion", "Rebuild", "Recommendations", "RecommendedItem", "Resume",
           "Rollback", "ShadowStats", "SimilarItems", "SloCheck", "Status", "VersionFeedback"]
