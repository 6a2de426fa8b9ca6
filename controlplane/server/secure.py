"""The secure xDS port (15012): TLS with meshd's server certificate, then a bearer token.

Where identity is checked, in order:
1. here, before the first request is read: the stream's metadata must carry a credential
   one of the authenticators accepts (`authorization: Bearer <jwt>` in file mode);
   otherwise the stream ends with UNAUTHENTICATED (event `ads auth failed`);
2. in AdsServer, on the first request: the node must claim the authenticated namespace
   and service account, else PERMISSION_DENIED (event `ads auth denied`);
3. in the SDS provider, before a key leaves: the same rule again (defence in depth).

Only this servicer gives a stream an identity; the plaintext port's streams have none
and therefore never receive a workload key.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import discovery_pb2

from ca import Identity

from ..security.authn import AuthenticationError, Authenticator, authenticate_stream, normalize_metadata
from .host import AdsServer
from .protocol import Context


class SecureAdsServicer:
    def __init__(self, ads: AdsServer, authenticators: Sequence[Authenticator], metrics: Any, logger: Any = None):
        if not authenticators:
            raise ValueError("the secure xDS port needs at least one authenticator")
        self._ads = ads
        self._authenticators = tuple(authenticators)
        self._metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger("meshd.ads")

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Context
    ) -> None:
        identity = await self._authenticate(context)
        if identity is None:
            return
        await self._ads.serve_stream(request_iterator, context, identity=identity)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: Context) -> None:
        # The same rules as SotW: authenticated before any request is read, and the
        # identity passed on (it decides who gets a workload key over SDS).
        identity = await self._authenticate(context)
        if identity is None:
            return
        await self._ads.serve_delta_stream(request_iterator, context, identity=identity)

    async def _authenticate(self, context: Context) -> Identity | None:
        """The stream's identity; None after ending the stream with UNAUTHENTICATED."""
        peer = context.peer()
        try:
            return await authenticate_stream(
                self._authenticators, normalize_metadata(context.invocation_metadata()), peer
            )
        except AuthenticationError as e:
            await self._refuse(context, peer, str(e))
        except Exception as e:  # an authenticator's own failure (e.g. a TokenReview call)
            self._log.exception("ads authenticator failed", peer=peer)
            await self._refuse(context, peer, f"authenticator error: {type(e).__name__}")
        return None

    async def _refuse(self, context: Context, peer: str, reason: str) -> None:
        self._metrics.auth_failed("unauthenticated")
        self._log.warning("ads auth failed", peer=peer, reason=reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"authentication failed: {reason}")
