"""meshd's certificate authority: a self-signed root, workload certificates in
Istio's profile, and service account tokens for file mode."""
from .errors import CAError, CAStateError, CSRError, TokenError
from .identity import Identity
from .issuer import DEFAULT_WORKLOAD_TTL, CertificateAuthority, KeyAndChain
from .keys import KEY_TYPES, KeyType, generate_private_key, write_private
from .root import RootCA, load_or_create_root
from .tokens import TokenAuthority, load_or_create_token_key

__all__ = [
    "CAError", "CAStateError", "CSRError", "TokenError",
    "Identity",
    "CertificateAuthority", "KeyAndChain", "DEFAULT_WORKLOAD_TTL",
    "KEY_TYPES", "KeyType", "generate_private_key", "write_private",
    "RootCA", "load_or_create_root",
    "TokenAuthority", "load_or_create_token_key",
]
