"""Helpers shared by test modules of several folders (``from support.x import y``).

Fixtures stay in conftest.py files; these are plain functions and classes.
"""
