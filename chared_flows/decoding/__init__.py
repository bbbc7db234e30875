"""The CharED decoding core. Imports nothing from the package but `errors`."""

from chared_flows.decoding.backends.auto import choose_backend, chosen_under, pin_problem, pinned_arguments
from chared_flows.decoding.backends.auto import policy as backend_policy
from chared_flows.decoding.backends.checks import check_model_spec
from chared_flows.decoding.backends.fingerprints import fingerprint as model_fingerprint
from chared_flows.decoding.backends.protocol import Backend, FactoryBackend, TokenRunner
from chared_flows.decoding.config import DecodeConfig
from chared_flows.decoding.decoder import (
    CancelToken,
    Ensemble,
    GenerationResult,
    GenerationStats,
    cancel_requested,
    cancellable,
)
from chared_flows.decoding.index import PrefixIndex
from chared_flows.decoding.backends.assets import MemberAssets
from chared_flows.decoding.members import Member
from chared_flows.decoding.scoring import ScoreResult
from chared_flows.decoding.summary import generation_info
from chared_flows.decoding.text import argv_text, check_prompt, decode_utf8, unescape
from chared_flows.decoding.backends.transformers import TransformersBackend
from chared_flows.decoding.vocab import BYTE_LEVEL, SENTENCEPIECE, ByteVocabulary

__all__ = [
    "Backend",
    "FactoryBackend",
    "TokenRunner",
    "argv_text",
    "backend_policy",
    "pin_problem",
    "choose_backend",
    "chosen_under",
    "pinned_arguments",
    "cancellable",
    "model_fingerprint",
    "check_prompt",
    "decode_utf8",
    "unescape",
    "check_model_spec",
    "cancel_requested",
    "generation_info",
    "TransformersBackend",
    "BYTE_LEVEL",
    "SENTENCEPIECE",
    "ByteVocabulary",
    "CancelToken",
    "DecodeConfig",
    "Ensemble",
    "GenerationResult",
    "GenerationStats",
    "Member",
    "MemberAssets",
    "PrefixIndex",
    "ScoreResult",
]
