"""Encoders, the fusion classifier and the image-to-report captioner."""
