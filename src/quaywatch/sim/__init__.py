"""Simulation: synthetic container-terminal traffic."""
