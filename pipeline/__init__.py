"""The pipeline: its one definition, the gates, the model registry client and the local runner."""
