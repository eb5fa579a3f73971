"""Studying cells: the tasks, sweeps over variants, seeds and tasks (``gatekit compare``), the
variants table (``gatekit variants``) and the pictures of traces (``gatekit trace``)."""
