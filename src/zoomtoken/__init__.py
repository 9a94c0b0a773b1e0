"""Keep a Zoom OAuth access token fresh in the background for asyncio services."""

__version__ = "0.1.0"
