"""Generation backends (``register_generation_backends``): how the teacher writes, in process or over HTTP."""
