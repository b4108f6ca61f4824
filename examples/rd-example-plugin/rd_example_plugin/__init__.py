"""Example reasondistill plugin: the ``query_coverage`` reward and the ``job_search`` domain."""
