"""PruneLens app: the model runtime (``app.runtime``), model-family adapters and calibration."""
