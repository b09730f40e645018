"""Experiment configs: one module per experiment, each with ``get_config()`` (run them with
``python -m experiments.run --config NAME``)."""
