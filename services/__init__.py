"""ghibli-anim: a one-line idea to a Studio-Ghibli-style animation, frame by frame.

The source lives under ``services/``: one folder per service (planner, renderer,
depth, assembler, trainer, web) and ``common``, the shared package every service
imports. No service imports another service.
"""

__version__ = "0.1.0"
