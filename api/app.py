"""The HTTP service: a FastAPI app factory over the interrogator.

    uvicorn --factory api.app:create_app        # settings from UNPROMPT_* environment variables
    unprompt serve --profile lite --port 8000
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import swagger_ui_bundle

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from api.batcher import MicroBatcher
from api.deps import Service
from api.errors import install_error_handlers
from api.logs import configure
from api.metrics import Metrics
from api.middleware import BodySizeLimit, ConcurrencyLimit, Observe
from api.routes import DOCS_ASSETS, router
from api.settings import Settings
from retriever import __version__
from retriever.decode_pool import shared_pool
from retriever.pipeline import Interrogator


def default_batch_size() -> int:
    import torch

    return 32 if torch.cuda.is_available() else 4


def _start(settings: Settings, metrics: Metrics, interrogator: Interrogator) -> Service:
    def run(images, options):
        mode, flavours = options or (None, None)
        results = interrogator.interrogate_batch(images, mode, flavours)
        for result in results:  # per image, as the histogram says
            for stage, ms in result.timings_ms.items():
                metrics.stage.labels(stage).observe(ms / 1000)
        return results

    batcher = MicroBatcher(run, settings.max_batch_size or default_batch_size(), settings.max_wait_ms,
                           on_batch=metrics.batch_size.observe, enabled=settings.batching)
    batcher.start()
    return Service(interrogator, batcher, shared_pool(settings.decode_workers, settings.decode_memory_bytes),
                   settings.image_limits())


def create_app(settings: Settings | None = None, interrogator: Interrogator | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    log = configure(settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = interrogator
        if loaded is None:
            from retriever.profile import load_profile

            loaded = await run_in_threadpool(
                Interrogator.from_profile, load_profile(settings.profile), settings.verify_checksums)
        service = _start(settings, metrics, loaded)
        await run_in_threadpool(service.decoder.warm)  # the decode workers start before the first request
        app.state.service = service
        log.info("ready", extra={"fields": {"profile": loaded.profile.name, "batching": settings.batching}})
        yield
        app.state.service = None
        await service.batcher.stop()  # the decode pool is the process's: it stops when the process exits

    app = FastAPI(title="unprompt", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Recover the prompt behind an image. POST an image to /v1/interrogate.")
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")
    app.state.settings, app.state.metrics, app.state.service = settings, metrics, None
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes, timeout_s=settings.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests)
    app.add_middleware(Observe, metrics=metrics, log=log)  # added last: outermost, sees every response
    install_error_handlers(app, metrics)
    app.include_router(router)
    return app
