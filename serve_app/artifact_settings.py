"""Where artifacts (input images, meshes) live: ``app.artifacts`` in the config, one model per backend.

Imports pydantic only, so the config module stays free of the storage libraries.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class LocalArtifactSettings(BaseModel):
    """Files under `data_dir/artifacts` (a local disk, or NFS shared by every node)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["local"] = Field("local", description="`local`: files under `data_dir/artifacts`.")


class S3ArtifactSettings(BaseModel):
    """Objects in one S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...), under an optional prefix.

    Credentials are never part of the config: they come from the standard AWS sources the object store
    client reads (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, web identity
    tokens, ECS task roles, the EC2 instance metadata service).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["s3"] = Field(description="`s3`: objects in an S3-compatible bucket.")
    bucket: str = Field(min_length=3, max_length=63, description="The bucket; it must exist.")
    prefix: str = Field(
        "",
        pattern=r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$",
        description="Key prefix for every object (`orfeas/prod` stores `orfeas/prod/results/...`); empty: "
        "the bucket's root.",
    )
    endpoint_url: str | None = Field(
        None, description="null: AWS S3 of `region`; otherwise the server's URL (`http://minio.internal:9000`)."
    )
    region: str | None = Field(None, description="null: from `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.")
    allow_http: bool = Field(
        False, description="Allow a plain `http://` `endpoint_url` (a MinIO on a private network); off: HTTPS only."
    )
    virtual_hosted_style: bool = Field(
        False, description="Address the bucket as `bucket.host` instead of `host/bucket` (path style)."
    )
    download: Literal["stream", "redirect"] = Field(
        "stream",
        description="`stream`: results pass through the ingress; `redirect`: `307` to a presigned URL, so the "
        "bytes go straight from the bucket to the agent (who must reach the endpoint).",
    )
    presign_expiry_s: int = Field(
        300,
        ge=1,
        le=7 * 24 * 3600,
        description="How long a presigned download URL (`download: redirect`) stays valid.",
    )


ArtifactSettings = Annotated[LocalArtifactSettings | S3ArtifactSettings, Field(discriminator="kind")]
