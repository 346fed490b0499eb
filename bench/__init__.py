"""postroom's benchmark against the seeds' pattern: ``python -m bench`` (``make bench``)."""
