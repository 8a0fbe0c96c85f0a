"""The server side of a run: one round loop that drives a backend, whatever runs the clients."""
