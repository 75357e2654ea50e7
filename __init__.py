"""ethoprism: frozen video foundation models for animal behaviour.

Extract VideoPrism tokens from an archive once into a Zarr feature store (`ethoprism.extract`,
`ethoprism.store`, `ethoprism.pipeline`), then train and run many small heads on it
(`ethoprism.probe`).
"""

__version__ = "0.1.0"
