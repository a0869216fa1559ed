"""quaywatch: passive monitoring of port and critical-infrastructure OT networks."""

__version__ = "0.1.0"
