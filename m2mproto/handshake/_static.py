"""A Noise static key bound to an identity, made once and reused (spec/handshake.md 2.3, 2.5).

The identity binding signs only the static public key, so one static key and
its signature can serve every handshake of an identity: a process makes a
:class:`StaticKey` once (one X25519 parse, one Ed25519 signature) instead of
once per connection. Ephemeral keys stay fresh per handshake, so forward
secrecy is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ErrorCode, LocalProtocolError
from ..identity import Identity
from ..noise import KeyPair, generate_x25519_private, x25519_keypair
from ._payload import binding_entries, binding_message

__all__ = ["StaticKey"]


class StaticKey:
    """Our Noise static X25519 key pair and the identity signature binding it.

    Args:
        identity: the identity whose handshakes use this key.
        private: the raw 32-byte X25519 private key.

    Hazmat: the object holds the private key; never log or serialize it.

    Raises:
        LocalProtocolError: (``INVALID_ARGUMENT``) *private* is not 32 bytes.
    """

    __slots__ = ("binding_cbor", "identity_key", "keypair", "signature")

    def __init__(self, identity: Identity, private: bytes) -> None:
        if not isinstance(private, bytes) or len(private) != 32:
            raise LocalProtocolError(
                "static_key must be a 32-byte X25519 private key", ErrorCode.INVALID_ARGUMENT
            )
        #: The parsed X25519 key pair (private key object and public bytes).
        self.keypair: KeyPair = x25519_keypair(private)
        #: The Ed25519 public key of the identity that signed the binding.
        self.identity_key: bytes = identity.public_key
        #: ``Ed25519-Sign(identity, binding-message(public))`` (spec 2.5).
        self.signature: bytes = identity.sign(binding_message(self.keypair.public))
        #: Payload entries 1 and 2 (identity key, signature) in CBOR, encoded once.
        self.binding_cbor: bytes = binding_entries(self.identity_key, self.signature)

    @classmethod
    def generate(cls, identity: Identity, entropy: Callable[[int], bytes]) -> StaticKey:
        """A fresh static key for *identity*, its private key drawn from *entropy*.

        Raises:
            LocalProtocolError: (``INVALID_ARGUMENT``) *entropy* returned the wrong length.
        """
        return cls(identity, generate_x25519_private(entropy))

    @property
    def public(self) -> bytes:
        """The 32-byte X25519 static public key."""
        return self.keypair.public

    def __repr__(self) -> str:
        return f"StaticKey(public={self.keypair.public.hex()})"
