"""Extraction: video decoding, windowing, preprocessing and the frozen VideoPrism encoder."""

from ethoprism.extract.encoder import CONFIGS, Encoder, EncoderConfig, EncoderOutput
from ethoprism.extract.weights import load_encoder

__all__ = ["CONFIGS", "Encoder", "EncoderConfig", "EncoderOutput", "load_encoder"]
