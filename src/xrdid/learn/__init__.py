"""Learning: the model zoo, training, inference, metrics, baselines and calibration."""
