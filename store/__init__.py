"""The Zarr v3 feature store: schema, token coding, writer, reader, validation, remote access."""
