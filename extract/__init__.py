"""Extraction: video decoding, windowing, preprocessing and the frozen VideoPrism encoder.

The encoder names are imported on first use: decode worker processes import only
`extract.video` / `extract.windows` and should not pay for (or hold the memory of) JAX.
"""

_ENCODER_NAMES = {
    "CONFIGS": "ethoprism.extract.encoder",
    "Encoder": "ethoprism.extract.encoder",
    "EncoderConfig": "ethoprism.extract.encoder",
    "EncoderOutput": "ethoprism.extract.encoder",
    "load_encoder": "ethoprism.extract.models",
}

__all__ = ["CONFIGS", "Encoder", "EncoderConfig", "EncoderOutput", "load_encoder"]


def __getattr__(name: str):
    if name in _ENCODER_NAMES:
        import importlib

        return getattr(importlib.import_module(_ENCODER_NAMES[name]), name)
    raise AttributeError(f"module 'ethoprism.extract' has no attribute {name!r}")
