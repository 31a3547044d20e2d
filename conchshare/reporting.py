"""
Proxies that tell L{conchshare.service.ShareService} what
L{twisted.application.internet.ClientService} does not: why a connection
attempt failed (L{FailureRecordingEndpoint}) and which protocol's
connection was lost (L{LossReportingFactory}, L{LossReportingProtocol}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["FailureRecordingEndpoint", "LossReportingFactory", "LossReportingProtocol"]

_P = TypeVar("_P", bound=IProtocol)
_P_co = TypeVar("_P_co", bound=IProtocol, covariant=True)


class _BuildsProtocols(Protocol[_P_co]):
    def buildProtocol(self, addr: IAddress) -> _P_co | None: ...


@implementer(IStreamClientEndpoint)
class FailureRecordingEndpoint:
    """
    Wraps an endpoint to report why a connection attempt failed.
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, onFailure: Callable[[Failure], object]
    ) -> None:
        """
        @param onFailure: called with the failure of each attempt that
            failed, before the caller of L{connect} sees it.
        """
        self._endpoint = endpoint
        self._onFailure = onFailure

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        @return: the wrapped endpoint's Deferred, unchanged.
        """
        d: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)

        def failed(f: Failure) -> Failure:
            self._onFailure(f)
            return f

        return d.addErrback(failed)


@implementer(IProtocol)
class LossReportingProtocol(Generic[_P]):
    """
    A protocol proxy that reports C{connectionLost} after the protocol saw
    it.  Other attributes are the wrapped protocol's.

    @ivar wrapped: the protocol it wraps.
    """

    def __init__(self, protocol: _P, onLost: Callable[[_P, Failure], object]) -> None:
        self.wrapped = protocol
        self._onLost = onLost

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self.wrapped.makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        """
        Tell the wrapped protocol, then report C{(wrapped, reason)}.
        """
        try:
            self.wrapped.connectionLost(reason)
        finally:
            self._onLost(self.wrapped, reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


@implementer(IProtocolFactory)
class LossReportingFactory(Generic[_P]):
    """
    Wraps a protocol factory: each protocol it builds is a
    L{LossReportingProtocol}.
    """

    def __init__(
        self, factory: _BuildsProtocols[_P], onLost: Callable[[_P, Failure], object]
    ) -> None:
        self._factory = factory
        self._onLost = onLost

    def buildProtocol(self, addr: IAddress) -> LossReportingProtocol[_P] | None:
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            return None
        return LossReportingProtocol(protocol, self._onLost)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)
