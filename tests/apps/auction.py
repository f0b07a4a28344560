"""The auction's messages, for the request/response tests (in-process and over uvicorn).

``bid {lot, amount}`` is a request; its reply is ``bid_accepted {lot, amount}``.
"""

from __future__ import annotations

import msgspec


class Bid(msgspec.Struct, tag="bid", forbid_unknown_fields=True):
    lot: str
    amount: int


class BidAccepted(msgspec.Struct, tag="bid_accepted"):
    lot: str
    amount: int
