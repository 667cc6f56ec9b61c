"""The queue manager (``jupyter launch queue up|down|status``): a queue's agents started where its provider runs,
kept between ``min_instances`` and ``max_instances`` with demand, and removed with their tokens; and the agent image
they run from."""
