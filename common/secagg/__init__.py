"""Secure aggregation (SecAgg+, Bell et al. 2020) over ``cryptography`` primitives; no Flower inside.

Shops send only masked, quantized adapter updates; the server learns only the weighted sum and
the total weight. Start with :class:`SecAggConfig`, then drive :class:`SecAggServer` and one
:class:`SecAggClient` per shop through the four stages declared in :mod:`.messages`, or call
:func:`run_round` for an in-memory round.
"""

from .client import ClientState, SecAggClient
from .config import DEFAULT_COLLUDING_FRACTION, SecAggConfig, element_bound, max_frac_bits, planned_colluders
from .driver import RoundTrace, run_round
from .errors import (
    SecAggAbort, SecAggConfigError, SecAggError, SecAggIntegrityError, SecAggProtocolError, ShareKindViolation,
)
from .graph import NeighbourGraph, default_degree, neighbour_graph, threshold_for
from .identity import Identity, Roster
from .keybatch import Keyring, SignatureCache
from .messages import (
    WIRE_MESSAGES, ConsistencyRequest, ConsistencySignature, KeyAdvertisement, KeyBroadcast, MaskedInput, RoundSetup,
    ShareDistribution, ShareRelay, Stage, UnmaskRequest, UnmaskResponse, message_from_record,
    record_nbytes,
)
from .policy import SecAggPolicy
from .primitives import Randomness, SeededRandomness
from .quantize import decode, quantize
from .server import AggregateResult, SecAggServer, ServerState

__all__ = [
    "AggregateResult", "ClientState", "ConsistencyRequest", "ConsistencySignature", "Identity", "Keyring", "Roster",
    "SecAggPolicy", "KeyAdvertisement", "KeyBroadcast", "MaskedInput", "NeighbourGraph",
    "Randomness", "RoundSetup", "RoundTrace", "SecAggAbort", "SecAggClient", "SecAggConfig", "SecAggConfigError",
    "SecAggError", "SecAggIntegrityError", "SecAggProtocolError", "SecAggServer", "SeededRandomness",
    "ServerState", "ShareDistribution", "SignatureCache", "ShareKindViolation", "ShareRelay", "Stage",
    "UnmaskRequest", "UnmaskResponse", "WIRE_MESSAGES", "decode", "default_degree", "element_bound",
    "max_frac_bits", "message_from_record", "planned_colluders", "DEFAULT_COLLUDING_FRACTION", "neighbour_graph", "quantize", "record_nbytes", "run_round",
    "threshold_for",
]
