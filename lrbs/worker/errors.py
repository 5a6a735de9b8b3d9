"""Errors a job can end with on the worker."""


class JobError(Exception):
    """The job asks for something this worker cannot do: fail it with this message, do not retry."""
