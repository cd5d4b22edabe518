"""Headless execution: the ``streamnb`` command line."""
