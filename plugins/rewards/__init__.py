"""Reward scoring (``score_reasoning``): the multi-dimensional reward behind the teacher's preference pairs."""
