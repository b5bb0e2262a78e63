"""Vertebra segmentation of spine radiographs: I/O, export, prediction and phantoms."""

__version__ = "0.1.0"
