"""m2dist: distributed pretraining for Monarch Mixer (M2) models."""

__version__ = "0.1.0"
