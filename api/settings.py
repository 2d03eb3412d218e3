"""Service settings: environment variables (UNPROMPT_*) and .env, through pydantic-settings."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retriever.images import ImageLimits

_IMAGE = ImageLimits()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNPROMPT_", env_file=".env", extra="ignore")

    profile: str | None = Field(default=None, description="profile name or path (default: lite)")
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(default=_IMAGE.max_bytes, ge=1, description="largest request body accepted")
    max_pixels: int = Field(default=_IMAGE.max_pixels, ge=1, description="largest image (width x height) decoded")
    max_aspect: float = Field(default=_IMAGE.max_aspect, ge=1, description="largest ratio of long to short side")
    max_batch_images: int = Field(default=32, ge=1, description="images in one /v1/interrogate/batch request")
    decode_workers: int = Field(default=2, ge=1, description="images decoded at once (bounds decode memory)")
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

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels, max_aspect=self.max_aspect)
