"""The S3-compatible object store (SeaweedFS, Garage, MinIO, AWS): evidence goes up, rollout bundles come down.

One boto3 client per station, with short time-outs and no retries of its own: the outbox retries in order, so a
store that is down makes results wait rather than stalling a thread for minutes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, SecretStr

from edge.core.config import EdgeModel
from edge.core.errors import EdgeError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class S3Error(EdgeError):
    """The object store refused or could not be reached."""


class S3Config(EdgeModel):
    """Where evidence is uploaded and rollout bundles are read."""

    type: Literal["s3"] = Field("s3", description="section discriminator")
    endpoint_url: str | None = Field(
        None, description="http(s)://host:port of an S3-compatible server (SeaweedFS, Garage, MinIO); None: AWS"
    )
    bucket: str = Field(min_length=3, description="bucket that evidence is uploaded to (it must exist)")
    region: str = Field("us-east-1", description="S3 region name (most S3-compatible servers ignore it)")
    access_key_id: str | None = Field(None, description="access key; None: boto3's usual chain (AWS_* env, files)")
    secret_access_key: SecretStr | None = Field(None, description="secret key of access_key_id (never logged)")
    timeout_s: float = Field(10.0, gt=0, description="connect and read time-out of one request")


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key)."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise S3Error(f"{uri!r} is not an s3://bucket/key URI", "name the object as s3://<bucket>/<key>")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise S3Error(f"{uri!r} is not an s3://bucket/key URI", "name the object as s3://<bucket>/<key>")
    return bucket, key


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ObjectStore:
    """Upload and download whole files; every failure is an :class:`S3Error` naming the endpoint and the object."""

    def __init__(self, config: S3Config) -> None:
        self.config = config
        secret = config.secret_access_key.get_secret_value() if config.secret_access_key is not None else None
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=secret,
            config=BotoConfig(
                connect_timeout=config.timeout_s,
                read_timeout=config.timeout_s,
                retries={"max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    @property
    def where(self) -> str:
        return self.config.endpoint_url or f"AWS S3 ({self.config.region})"

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key`` in the configured bucket (a repeated PUT overwrites); returns its s3:// URI."""
        try:
            self.client.put_object(Bucket=self.config.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as err:
            raise S3Error(
                f"upload of s3://{self.config.bucket}/{key} to {self.where} failed: {err}",
                "check that the object store is reachable, the bucket exists and the keys may write to it",
            ) from None
        return f"s3://{self.config.bucket}/{key}"

    def get(self, uri: str, dest: Path) -> None:
        """Download ``s3://bucket/key`` to ``dest`` (written to a temporary name, then renamed)."""
        bucket, key = parse_uri(uri)
        tmp = dest.with_name(dest.name + ".part")
        try:
            self.client.download_file(bucket, key, str(tmp))
        except (BotoCoreError, ClientError) as err:
            tmp.unlink(missing_ok=True)
            raise S3Error(
                f"download of {uri} from {self.where} failed: {err}",
                "check the URI, that the object store is reachable and that the keys may read the bucket",
            ) from None
        tmp.replace(dest)
