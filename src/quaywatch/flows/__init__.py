"""Flows: bidirectional flow tracking, Community ID and TCP stream reassembly."""
