"""Circuit Workbench: find and check circuits in transformer language models."""

__version__ = "0.1.0"
