"""Threat intelligence: indicator feeds (STIX 2.1, CSV) imported from files for detection D10."""
