"""Identification of measured patterns with a trained model: the identifier, its MLflow pyfunc
wrapper and the explanations (Grad-CAM, plots, HTML report, NCA map)."""
