"""Extraction: video decoding, windowing, preprocessing and the frozen VideoPrism encoder."""
