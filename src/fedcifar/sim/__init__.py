"""The simulation engine: one round loop and a pool of client trainers."""
