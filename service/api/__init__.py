"""The HTTP service: app factory, settings, request bodies (JSON/Arrow, bounded), routes and metrics."""
