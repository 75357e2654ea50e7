"""The store's errors (a module of their own so that `layout` and `schema` can both raise them)."""

from ethoprism.errors import EthoprismError


class StoreError(EthoprismError):
    """The store is missing, malformed, of another schema, or cannot be written."""


class StoreIdentityError(StoreError):
    """Two stores (or a store and a writer) disagree on encoder, preprocessing or layout."""
