"""Readers and writers of annotated images (Qt-free)."""

from .annotated import AnnotatedImage

__all__ = ["AnnotatedImage"]
