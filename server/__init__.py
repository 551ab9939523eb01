"""covisit server: gRPC services and the command line over covisit.core."""
