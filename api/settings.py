"""Service settings: environment variables (UNPROMPT_*) and .env, through pydantic-settings."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retriever.decode_pool import DEFAULT_MEMORY_BYTES
from retriever.images import DEFAULT_FORMATS, ImageLimits

_IMAGE = ImageLimits()
MAX_JSON_DEPTH = 32  # nesting of a JSON body (feedback is one flat object); deeper is refused, never recursed into
MIN_SERVICE_WORKERS = 2  # decode workers of the service at least: one slow upload never holds up the next


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNPROMPT_", env_file=".env", extra="ignore")

    profile: str | None = Field(default=None, description="profile name or path (default: lite)")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=_IMAGE.max_bytes, ge=1, description="largest request body accepted")
    max_pixels: int = Field(default=_IMAGE.max_pixels, ge=1, description="largest image (width x height) decoded")
    max_aspect: float = Field(default=_IMAGE.max_aspect, ge=1, description="largest ratio of long to short side")
    max_batch_images: int = Field(default=32, ge=1, description="images in one /v1/interrogate/batch request")
    formats: list[str] = Field(default_factory=lambda: list(DEFAULT_FORMATS),
                               description="image formats accepted (Pillow's names); the rest get 415 not_image")
    max_decode_bytes: int = Field(default=_IMAGE.max_decode_bytes, ge=1,
                                  description="memory the decoded image may take, from its header, before decoding")
    decode_workers: int | None = Field(
        default=None, ge=1,
        description="decode worker processes: images decoded at once (bounds decode memory). Default: the thread "
                    f"plan's decode share, at least {MIN_SERVICE_WORKERS}, so that one slow upload never holds up "
                    "the next (the workers sleep unless a decode is in flight)")
    decode_timeout_s: float = Field(default=_IMAGE.decode_seconds, gt=0, le=3600,
                                    description="wall-clock limit of one decode; past it the worker is stopped and "
                                                "the image gets 413 too_slow")
    decode_memory_bytes: int = Field(default=DEFAULT_MEMORY_BYTES, ge=0,
                                     description="address space each decode worker may add over its start-up size "
                                                 "(RLIMIT_AS; 0: no cap)")
    max_concurrent_requests: int = Field(default=64, ge=1,
                                         description="requests in progress at once; past it, 503 busy (JSON)")
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600,
                                    description="a connection must send a complete request head within this time "
                                                "(of opening, or of its last response); else 408 and closed")
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600,
                                  description="a request body must arrive in full within this time; else 408")
    keep_alive_s: int = Field(default=5, ge=1, le=3600, description="idle keep-alive connections close after this")
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1 << 20,
                                  description="largest request head (request line and headers); past it, 400")
    api_key: SecretStr | None = Field(default=None, description="if set, /v1/* needs X-API-Key or a Bearer token")
    cors_origins: list[str] = Field(default_factory=list, description='e.g. ["https://example.com"]')
    batching: bool = Field(default=True, description="gather concurrent requests into one model batch")
    max_batch_size: int | None = Field(
        default=None, ge=1,
        description="images per model batch; default 4 on a CPU (bigger batches run slower per image there: "
                    "EfficientNet-Lite2 measured 23 ms/image at 1, 24 at 4, 83 at 16) and 32 on a GPU")
    max_wait_ms: float = Field(default=5.0, ge=0, description="how long the first request of a batch waits for company")
    shutdown_timeout_s: float = Field(default=10.0, gt=0,
                                      description="on SIGTERM, how long open requests may finish before they are cut")
    verify_checksums: bool = Field(default=False, description="SHA-256 every index file at start-up (sizes are always "
                                                              "checked; `unprompt verify INDEX` checks checksums)")
    log_json: bool = True
    feedback_keep_images: bool = Field(default=False, description="keep the images sent with POST /v1/feedback "
                                                                  "(under $UNPROMPT_HOME/feedback/images)")
    watch_indexes: bool = Field(default=False, description="take up a committed rebuild of an index without a restart "
                                                            "(polls each index's build.json)")
    watch_interval_s: float = Field(default=2.0, gt=0, description="how often the index watcher looks")

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("UNPROMPT_API_KEY is set but empty: unset it to serve without a key, or give a key")
        return v

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        from PIL import Image

        Image.init()
        names = [f.strip().upper() for f in v]
        unknown = [f for f in names if f not in Image.OPEN]
        if unknown:
            raise ValueError(f"formats Pillow cannot read here: {', '.join(unknown)}; known: {', '.join(sorted(Image.OPEN))}")
        if not names:
            raise ValueError("at least one format must be accepted")
        return names

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels, max_aspect=self.max_aspect,
                           formats=tuple(self.formats), max_decode_bytes=self.max_decode_bytes,
                           decode_seconds=self.decode_timeout_s)


def service_decode_workers(settings: Settings) -> int:
    """The service's decode workers: the setting, else the thread plan's share with the floor above."""
    from retriever.threads import decode_workers

    return settings.decode_workers or max(MIN_SERVICE_WORKERS, decode_workers())
