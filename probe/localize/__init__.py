"""Localization: box annotations, a simple feature pyramid and a detection head on per-frame
token maps, COCO evaluation."""
