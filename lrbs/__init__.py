__version__ = "0.1.0"


def __getattr__(name: str):  # `from lrbs import Client, apply` without loading httpx or torch for everyone else
    if name in ("Client", "JobFailed", "JobCancelled", "LrbsError"):
        from lrbs import client

        return getattr(client, name)
    if name == "apply":
        from lrbs.advice import apply

        return apply
    raise AttributeError(f"module 'lrbs' has no attribute {name!r}")
