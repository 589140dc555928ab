"""The ``opcua:`` section of ``edge.yaml`` (apart from the server, so reading a config never needs asyncua)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge.core.config import EdgeModel


class OpcUaConfig(EdgeModel):
    """The station's OPC UA server (off by default). No security: bind it to a plant network a firewall guards."""

    type: Literal["opcua"] = Field("opcua", description="Section discriminator.")
    enabled: bool = Field(False, description="serve the last result and the station state over OPC UA")
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0: every interface, for PLCs on the line)")
    port: int = Field(4840, ge=0, le=65535, description="TCP port (4840 is OPC UA's registered port; 0: any free)")
    namespace: str = Field("urn:drumsight-edge:station", min_length=1, description="namespace URI of our nodes")
    system_name: str = Field(
        "VisionSystem", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="browse name of the station object"
    )
