"""meshd's certificate authority: a self-signed root or a plug-in CA (Istio's cacerts),
the CA directory over its life (rotation, archive, ledger), workload certificates in
Istio's profile, and service account tokens for file mode."""
from .errors import CAError, CAStateError, CSRError, TokenError
from .identity import Identity
from .issuer import DEFAULT_WORKLOAD_TTL, CertificateAuthority, KeyAndChain
from .keys import KEY_TYPES, KeyType, generate_private_key, write_private
from .root import RootCA, load_or_create_root
from .signer import Signer, load_plugin
from .store import CADirectory, CAState
from .tokens import TokenAuthority, load_or_create_token_key

__all__ = [
    "CAError", "CAStateError", "CSRError", "TokenError",
    "Identity",
    "CertificateAuthority", "KeyAndChain", "DEFAULT_WORKLOAD_TTL",
    "KEY_TYPES", "KeyType", "generate_private_key", "write_private",
    "RootCA", "load_or_create_root",
    "Signer", "load_plugin", "CADirectory", "CAState",
    "TokenAuthority", "load_or_create_token_key",
]
