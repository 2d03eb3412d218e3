"""The HTTP service: a FastAPI app factory over the interrogator.

    uvicorn --factory api.app:create_app        # settings from UNPROMPT_* environment variables
    unprompt serve --profile lite --port 8000
"""

from __future__ import annotations

import asyncio
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
from api.middleware import BodySizeLimit, ConcurrencyLimit, HeadSizeLimit, Observe
from api.reload import Reloader
from api.routes import DOCS_ASSETS, router
from api.settings import Settings, service_decode_workers
from retriever import __version__
from retriever.decode_pool import shared_pool
from retriever.feedback import FeedbackStore
from retriever.pipeline import Interrogator


def default_batch_size() -> int:
    import torch

    return 32 if torch.cuda.is_available() else 4


def _start(settings: Settings, metrics: Metrics, interrogator: Interrogator) -> Service:
    decoder = shared_pool(service_decode_workers(settings), settings.decode_memory_bytes)
    service = Service(interrogator, None, decoder, settings.image_limits())  # type: ignore[arg-type]

    def run(images, options):
        mode, flavours = options or (None, None)
        # the interrogator serving when the batch starts: a hot swap meanwhile leaves this batch on the old build
        results = service.interrogator.interrogate_batch(images, mode, flavours)
        for result in results:  # per image, as the histogram says
            for stage, ms in result.timings_ms.items():
                metrics.stage.labels(stage).observe(ms / 1000)
        return results

    service.batcher = MicroBatcher(run, settings.max_batch_size or default_batch_size(), settings.max_wait_ms,
                                   on_batch=metrics.batch_size.observe, enabled=settings.batching)
    service.batcher.start()
    return service


def create_app(settings: Settings | None = None, interrogator: Interrogator | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    log = configure(settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal interrogator
        # the service holds the interrogator from here on: a hot swap must be able to free the old one
        loaded, interrogator = interrogator, None
        if loaded is None:
            from retriever.profile import load_profile

            loaded = await run_in_threadpool(
                Interrogator.from_profile, load_profile(settings.profile), settings.verify_checksums)
        service = _start(settings, metrics, loaded)
        await run_in_threadpool(service.decoder.warm)  # the decode workers start before the first request
        app.state.service = service
        app.state.reloader = Reloader(service, metrics, log)
        watcher = asyncio.create_task(app.state.reloader.watch(settings.watch_interval_s)) \
            if settings.watch_indexes else None
        log.info("ready", extra={"fields": {"profile": loaded.profile.name, "batching": settings.batching,
                                            "watch_indexes": settings.watch_indexes}})
        yield
        if watcher:
            watcher.cancel()
        app.state.service = None
        await service.batcher.stop()  # the decode pool is the process's: it stops when the process exits

    app = FastAPI(title="unprompt", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Recover the prompt behind an image. POST an image to /v1/interrogate.")
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")
    app.state.settings, app.state.metrics, app.state.service = settings, metrics, None
    app.state.feedback = FeedbackStore(keep_images=settings.feedback_keep_images)
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes, timeout_s=settings.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests)
    app.add_middleware(HeadSizeLimit, limit=settings.max_header_bytes)  # a whole head uvicorn's limit let through
    app.add_middleware(Observe, metrics=metrics, log=log)  # added last: outermost, sees every response
    install_error_handlers(app, metrics)
    app.include_router(router)
    return app
