"""The contract between clients, the service and workers: pydantic models only, importable without torch.

- `job_spec`: what a client submits (JobSpec and its parts).
- `builtins`: the built-in models and datasets a spec can name, one class each, in one table per kind.
- `optimizers`: the built-in optimizers and the keywords each accepts (a table derived from torch).
- `shapes`: what a model needs to know about its data, and the rules that read it off arrays.
- `results`: what a finished job returns (Result, Recommendation, BatchSizeAdvice).
- `resources`: what the API serves (Job, datasets, workers, job states).
- `worker_messages`: the pull protocol workers speak (claim, lease, heartbeat, report).
"""
