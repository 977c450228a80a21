"""The ways a batch reaches a replica, as the backend reports them and the metrics label them.

Apart from ``serving.ray_backend`` so that the metrics can name them without importing Ray.
"""

from __future__ import annotations

from typing import Literal, get_args

Transport = Literal["direct", "shared_direct", "shared_ray", "by_value", "by_reference"]
"""The direct channel (a Unix socket to a replica on the gateway's node); shared memory with its layout over that
channel, or through Ray; a Ray Serve call by value (its gRPC channel), or by reference (the object store)."""
TRANSPORTS: tuple[Transport, ...] = get_args(Transport)
