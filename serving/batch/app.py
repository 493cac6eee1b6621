"""Wires lever 4 into a gateway replica: the store, the API service and the runner."""

from __future__ import annotations

from dataclasses import dataclass

from serving.batch.admission import BatchAdmission, InteractiveLoad
from serving.batch.runner import BatchRunner
from serving.batch.service import BatchService
from serving.batch.store import BatchStore
from serving.config import FrugalConfig
from serving.pipeline.pipeline import Pipeline
from serving.responses.service import ResponsesService
from serving.store.blobs import LocalBlobStore
from serving.store.db import open_engine, session_factory


@dataclass
class Batches:
    service: BatchService
    runner: BatchRunner


def start_batches(config: FrugalConfig, pipeline: Pipeline,
                  responses: ResponsesService | None = None) -> Batches:
    """Open the store and start this replica's runner (call inside the replica's loop).

    The runner reads the interactive load the batch lever counts on this replica's
    pipeline; without the lever (it is on whenever batches are) it sees none."""
    engine = open_engine(config.store.database_url())
    store = BatchStore(session_factory(engine), LocalBlobStore(config.store.files_path()))
    lever = pipeline.chain.lever("batch")
    load = getattr(lever, "load", None) or InteractiveLoad()
    runner = BatchRunner(store, pipeline, config.batch, BatchAdmission(config.batch, load))
    runner.responses = responses  # `/v1/responses` lines
    runner.engine_slots = lambda: engine_slots(pipeline)
    runner.gateway_replicas = gateway_replicas(config)
    runner.start()
    return Batches(BatchService(store, config.batch), runner)


async def engine_slots(pipeline: Pipeline) -> list[int]:
    """Each served model's `max_num_seqs`, as its engine reports it."""
    caller = pipeline.caller
    infos = [await caller.handle(model).info.remote() for model in sorted(caller.handles)]
    return [int(info["max_num_seqs"]) for info in infos]


def gateway_replicas(config: FrugalConfig) -> int:
    """How many gateway replicas share the engines (autoscaling: at most)."""
    deployment = config.gateway.deployment_config
    if deployment.autoscaling_config is not None:
        return deployment.autoscaling_config.max_replicas
    return deployment.num_replicas or 1
