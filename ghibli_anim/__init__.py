"""ghibli-anim: a one-line idea to a Studio-Ghibli-style animation, frame by frame.

The package's folders are its layers, each importing only from the ones below it
(ARCHITECTURE.md has the map; ``make lint`` checks the rule):

- ``cli``: the ``ghibli-anim`` command, one module per command group;
- ``embedded``: every service on one event loop (``ghibli-anim generate``);
- ``services``: planner, renderer, depth, assembler, trainer, web; none imports another;
- ``runtime``: the bus, the job store, the object store, the service base, gRPC,
  access control and observability;
- ``contracts``: generated protobuf code, configuration, limits, keys, the job
  lifecycle, the storyboard and manifest schemas, profiles and request validation.

``devtools`` (tiny models, local process stacks, code and docs generation) is for
development and tests; no production module imports it.
"""

__version__ = "0.1.0"
