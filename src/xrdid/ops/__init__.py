"""Operations around the models: MLflow tracking and registry, Optuna tuning, benchmarks."""
