"""Routers: ``predict`` (the API), ``model`` (health and model info), ``dashboard`` (run data), ``pages`` (HTML)."""
