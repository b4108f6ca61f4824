"""Student distillation (``register_students``, ``register_distill_losses``): encoders, losses, the
``distill`` stage, and the quality gate that decides whether the teacher's labels are worth it."""
