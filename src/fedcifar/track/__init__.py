"""Run artefacts: metrics table, plots, checkpoints, atomic writes."""
