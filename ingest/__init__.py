"""The write side: receive provider events, verify, normalize just enough to key them, append."""
