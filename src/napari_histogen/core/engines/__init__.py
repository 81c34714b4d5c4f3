"""Synthesis engines: plain objects that take a request and return results with provenance.

Each engine reports ``(step, total)`` through a callback and checks a cancel flag at every
denoising step; a cancelled run raises :class:`~napari_histogen.core.progress.Cancelled`
and leaves no output.
"""
