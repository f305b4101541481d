"""What server and clients share: data, task, text, metrics, baselines, configuration."""
