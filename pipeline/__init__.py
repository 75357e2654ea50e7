"""Orchestration of extraction runs: planning, resume, local and distributed runners, progress."""
