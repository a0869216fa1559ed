"""Decode: sans-IO protocol decoders, one folder per protocol, and their registry."""
