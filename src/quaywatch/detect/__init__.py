"""Detections: rule files and statistical modules that turn stored events into alerts."""
