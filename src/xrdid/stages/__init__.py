"""One module per ``dvc.yaml`` stage: ``run(params, paths)`` and its command-line arguments."""
