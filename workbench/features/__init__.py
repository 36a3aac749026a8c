"""Sparse dictionaries (SAEs, transcoders): train, load (SAELens / circuit-tracer layouts),
the replacement model, feature-basis attribution and feature circuits. See DESIGN.md."""
