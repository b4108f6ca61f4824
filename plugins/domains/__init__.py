"""Search domains (``register_domains``): prompts, student inputs and label scales per vertical."""
