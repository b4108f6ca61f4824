"""Built-in plugins: the paper's recipe, loaded through the ``reasondistill`` entry points."""
