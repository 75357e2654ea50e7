"""Classification: heads (MAP, FMAP, linear, MLP), many heads trained at once, per-frame
prediction and ethograms."""
