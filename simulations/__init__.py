"""Simulating many shops on one machine: synthetic data, partitioning, runners and reports."""
