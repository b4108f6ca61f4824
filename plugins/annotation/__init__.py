"""Annotation (``register_annotators``, ``register_selectors``): the teacher labels pairs, all of them or the uncertain ones."""
