"""Probing the store. Shared modules here (labels, artifacts, metrics, report); one wing per
task: `classify`, `retrieve`, `localize`. Wings use the shared modules and never each other."""
