"""Serve the global model: an upload page with top-5 predictions, a JSON API and a live dashboard.

``main.create_app`` builds the FastAPI app from :class:`~fedcifar.serve.settings.ServeSettings`;
``cli`` adds the ``fedcifar serve`` subcommand.
"""
