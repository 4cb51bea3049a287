"""The studies' internals (study A, B, C and the shared upstream); the public API is :mod:`jaxprune.transfer`."""
