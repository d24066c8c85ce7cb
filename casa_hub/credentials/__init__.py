"""Pure credential minting: bytes and values in, bytes out; no files, network or module state."""
