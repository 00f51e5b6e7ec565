"""The durable worker: claims instances, runs their steps, applies the engine's decisions."""

from durable.worker.worker import Worker, run_worker

__all__ = ["Worker", "run_worker"]
