"""Built-in recipes (YAML) and Python recipe builders."""
