"""Defaults shared by the probe's functions and the CLI (one home; nothing heavy imported)."""

LABEL_COLUMN = "action"  # the column of a label file holding the behaviour
BACKGROUND = "none"  # the label of frames without behaviour
