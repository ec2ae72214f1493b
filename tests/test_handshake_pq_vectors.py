"""The hybrid handshake vectors (interop/vectors/handshake_pq.json) in both roles.

See ``tests/pq_vectors.py`` for how the file is made. ``cryptography`` has no
deterministic ML-KEM encapsulation, so the responder's message 2 reproduces
only with the oracle (kyber-py) doing the encapsulation; the initiator's
side reproduces on ``cryptography`` alone. The KEM values are checked against
kyber-py and a published ML-KEM-768 key; the Noise key schedule is re-derived
by a straight-line reading of spec/handshake.md 2.13 that shares no code with
the engine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from kyber_py.ml_kem import ML_KEM_768
from pq_vectors import (
    VECTORS,
    dump,
    encaps_m,
    generate,
    handshakes,
    oracle_encapsulate,
)

from m2mproto.handshake import Handshake

DATA = json.loads(VECTORS.read_text())
TRANSCRIPTS = {t["pattern"]: t for t in DATA["transcripts"]}
PATTERNS = sorted(TRANSCRIPTS)


def _flights(t: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(f) for f in t["flights"]]


def _run_side(hs: Handshake, incoming: list[bytes]) -> tuple[list[bytes], Any]:
    """Feed *incoming* flights one at a time; collect what *hs* sends (bounded)."""
    sent = []
    out = hs.data_to_send()
    if out:
        sent.append(out)
    result = None
    for flight in incoming:
        hs.receive_data(flight)
        res = hs.next_event()
        result = res or result
        out = hs.data_to_send()
        if out:
            sent.append(out)
    return sent, result


def test_file_is_current() -> None:
    assert VECTORS.read_text() == dump(generate())


@pytest.mark.parametrize("pattern", PATTERNS)
def test_initiator_reproduces_without_oracle(pattern: str) -> None:
    t = TRANSCRIPTS[pattern]
    flights = _flights(t)
    init, _ = handshakes(pattern, None)
    sent, result = _run_side(init, [flights[1]])
    assert sent == flights[0::2]
    assert result is not None and result.pattern == pattern and result.post_quantum
    assert result.handshake_hash.hex() == t["handshake_hash"]
    assert result.suite == t["protocol_name"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_responder_reproduces_through_oracle(pattern: str) -> None:
    t = TRANSCRIPTS[pattern]
    flights = _flights(t)
    _, resp = handshakes(pattern, oracle_encapsulate(encaps_m()))
    sent, result = _run_side(resp, flights[0::2])
    assert sent == flights[1::2]
    assert result is not None and result.handshake_hash.hex() == t["handshake_hash"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_responder_on_cryptography_alone_differs_from_the_vector(pattern: str) -> None:
    # OpenSSL draws m itself: message 2 is not the vector's, yet the vector's
    # initiator completes against it (its decapsulation agrees).
    t = TRANSCRIPTS[pattern]
    flights = _flights(t)
    init, resp = handshakes(pattern, None)
    resp.receive_data(flights[0])
    assert resp.next_event() is None or pattern == "IKhfs"
    message_2 = resp.data_to_send()
    assert message_2 != flights[1]
    assert init.data_to_send() == flights[0]
    init.receive_data(message_2)
    result = init.next_event()
    assert result is not None and result.handshake_hash.hex() != t["handshake_hash"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_kem_values_against_the_oracle(pattern: str) -> None:
    t = TRANSCRIPTS[pattern]
    seed = bytes.fromhex(t["initiator"]["ml_kem_768_seed"])
    ek, dk = ML_KEM_768.key_derive(seed)
    ours = MLKEM768PrivateKey.from_seed_bytes(seed)
    assert ek.hex() == t["initiator"]["ml_kem_768_public"]
    assert ours.public_key().public_bytes_raw() == ek
    ct = bytes.fromhex(t["ml_kem_768_ciphertext"])
    ss = bytes.fromhex(t["ml_kem_768_shared_secret"])
    assert ML_KEM_768._encaps_internal(ek, encaps_m()) == (ss, ct)
    assert ML_KEM_768.decaps(dk, ct) == ss
    assert ours.decapsulate(ct) == ss
    assert len(ek) == 1184 and len(ct) == 1088 and len(ss) == 32


# The ML-KEM-768 example key of draft-ietf-lamps-kyber-certificates (Appendix C),
# generated from the seed 00 01 02 ... 3f (FIPS 203 ML-KEM.KeyGen_internal(d, z)).
_IETF_MLKEM768_SPKI = """
MIIEsjALBglghkgBZQMEBAIDggShACmKoQ1CPI3aBp0CvFnmzfA6CWuLPaTKubgM
pKFJB2cszvHsT68jSgvFt+nUc/KzEzs7JqHRdctnp4BZGWmcAvdlMbmcX4kYBwS7
TKRTXFuJcmecZgoHxeUUuHAJyGLrj1FXaV77P8QKne9rgcHMAqJJrk8JStDZvTSF
wcHGgIBSCnyMYyAyzuc4FU5cUXbAfaVgJHdqQw/nbqz2ZaP3uDIQIhW8gvEJOcg1
VwQzao+sHYHkuwSFql18dNa1m75cXpcqDYusQRtVtdVVfNaAoaj3G064a8SMmgUJ
cxpUvZ1ykLJ5Y+Q3Lcmxmc/crAsBrNKKYjlREuTENkjWIsSMgjTQFEDozDdskn8j
pa/JrAR0xmInTkJFJchVLs47P+JlFt6QG8fVFb3olVjmJslcgLkzQvgBAATznmxs
lIccXjRMqzlmyDX5qWpZr9McQChrOLHBp4RwurlHUYk0RTzoZzapGfH1ptUQqG9U
VPw5gMtcdlvSvV97NrFBDWY1yM60fE3aDXaijqyTnHHDAkgEhmxxYmZYRCFjwsIh
F+UKzvzmN4qYVlIwKk7wws4Mxxa3eW4ray43d9+hrD2iWaMbWptTD4y2OKgaYqww
GEmrr5WnMBvaMAaJCb/bfmfbzLs4pVUaJbGjoPaFdIrVdT2IgPABbGJ0hhZjhMVX
H+I2WQA2TQODEeLYdds2ZoaTK17GAkMKNp6Hpu9cM4eGZXglvUwFes65I+sJNeaQ
XmO0ztf4CFenc91ksVDSZhLqmsEgUtsgF78YQ8y0sygbaQ3HKK36hcACgbjjwJKH
M1+Fa0/CiS9povV5Ia2gGRTECYhmLVd2lmKnhjUbm2ZJPat5WU2YbeIQDWW6D/Tq
WLgVONJKRDWiWPrCVASqf0H2WLE4UGXhWNy2ARVzJyD0BFmqrBXkBpU6kKxSmX0c
zQcAYO/GXbnmUzVEZ/rVbscTyG51QMQjrPJmn1L6b0rGiI2HHvPoR8ApqKr7uS4X
skqgebH0GbphdbRCr7EZCdSla3CgM1soc5IYqnyTSOLDwvPrPRWkHmQXwN2Uv+sh
QZsxGnuxOhgLvoMyGKmmsXRHzIXyJYWVh6cwdwSay8/UTQ8CVDjhXRU4Jw1Ybhv4
MZKpRZz2PA6XL4UpdnmDHs8SFQmFHLg0D28Qew+hoO/Rs2qBibwIXE9ct4TlU/Qb
kY+AOXzhlW94W+43fKmqi+aZitowwmt8PYxrVSVMyWIDsgxCruCsTh67QI5JqeP4
edCrB4XrcCVCXRMFoimcAV4SDRY7DhlJTOVyU9AkbRgnRcuBl6t0OLPBu3lyvsWj
BuujVnhVwBRpn+9lrlTHcKDYXBhADPZCrtxmB3e6SxOFAr1aeBL2IfhKSClrmN1D
IrbxWCi4qPDgCoukSlPDqLFDVxsHQKvVZ9rxzenHnCBLbV4lnRdmoxu7y05qBc9F
AhdrMBwcL0Ekd1AVe87IXoCbMKTWDXdHzdD1uZqoyCaYdRd5OqqAgKCxJKhVjfcr
vje3X07btr6CFtbGM/srIoDiURPYaV5DSBw+6zl+sZJQUim2eiAeqJPD4ssy2ovD
QvpN6gV4
"""


def test_ml_kem_768_known_answer_key_generation() -> None:
    spki = base64.b64decode(_IETF_MLKEM768_SPKI)
    # SubjectPublicKeyInfo: id-alg-ml-kem-768 (2.16.840.1.101.3.4.4.2), then the raw key.
    assert spki[:22] == bytes.fromhex("308204b2300b0609608648016503040402038204a100")
    expected = spki[22:]
    seed = bytes(range(64))
    assert MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw() == expected
    assert ML_KEM_768.key_derive(seed)[0] == expected


# ------------------------------------------------------------------ independent key schedule

# Token lists as spec/handshake.md 2.13 writes them (not the engine's pattern table).
_TOKENS = {
    "XXhfs": [["e", "e1"], ["e", "ee", "ekem1", "s", "es"], ["s", "se"]],
    "IKhfs": [["e", "es", "e1", "s", "ss"], ["e", "ee", "ekem1", "se"]],
}


class _Schedule:
    """Noise SymmetricState, written out from the Noise specification (§5.2)."""

    def __init__(self, name: str) -> None:
        raw = name.encode()
        self.h = raw.ljust(32, b"\0") if len(raw) <= 32 else hashlib.sha256(raw).digest()
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        temp = hmac.new(self.ck, ikm, "sha256").digest()
        self.ck = hmac.new(temp, b"\x01", "sha256").digest()
        self.k = hmac.new(temp, self.ck + b"\x02", "sha256").digest()
        self.n = 0

    def decrypt_and_hash(self, data: bytes) -> bytes:
        if self.k is None:
            self.mix_hash(data)
            return data
        nonce = b"\0" * 4 + self.n.to_bytes(8, "little")
        plain = ChaCha20Poly1305(self.k).decrypt(nonce, data, self.h)  # InvalidTag if wrong
        self.n += 1
        self.mix_hash(data)
        return plain


def _dh(private_hex: str, public: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
    return key.exchange(X25519PublicKey.from_public_bytes(public))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_key_schedule_rederived_independently(pattern: str) -> None:
    t = TRANSCRIPTS[pattern]
    i, r = t["initiator"], t["responder"]
    st = _Schedule(t["protocol_name"])
    st.mix_hash(bytes.fromhex(t["prologue"]))
    if pattern == "IKhfs":
        st.mix_hash(bytes.fromhex(r["static_public"]))  # pre-message <- s
    # The initiator's view: its private keys, the responder's public keys.
    ours = {"e": i["ephemeral_private"], "s": i["static_private"]}
    theirs = {"e": bytes.fromhex(r["ephemeral_public"]), "s": bytes.fromhex(r["static_public"])}
    for index, (tokens, raw) in enumerate(
        zip(_TOKENS[pattern], t["noise_messages"], strict=True)
    ):
        message = bytes.fromhex(raw)
        mine = index % 2 == 0
        pos = 0

        def take(n: int, message: bytes = message) -> bytes:
            nonlocal pos
            n += 16 if st.k is not None else 0
            chunk = message[pos : pos + n]
            assert len(chunk) == n
            pos += n
            return chunk

        for token in tokens:
            if token == "e":
                pub = message[pos : pos + 32]
                pos += 32
                st.mix_hash(pub)
                assert pub.hex() == (i if mine else r)["ephemeral_public"]
            elif token == "s":
                pub = st.decrypt_and_hash(take(32))
                assert pub.hex() == (i if mine else r)["static_public"]
            elif token == "e1":
                pub = st.decrypt_and_hash(take(1184))
                assert pub.hex() == i["ml_kem_768_public"]
            elif token == "ekem1":
                ct = st.decrypt_and_hash(take(1088))
                assert ct.hex() == t["ml_kem_768_ciphertext"]
                st.mix_key(bytes.fromhex(t["ml_kem_768_shared_secret"]))
            else:  # DH tokens: first letter the initiator's key, second the responder's
                st.mix_key(_dh(ours[token[0]], theirs[token[1]]))
        payload = st.decrypt_and_hash(message[pos:])
        assert (payload == b"") == (pattern == "XXhfs" and index == 0)
    assert st.h.hex() == t["handshake_hash"]


def _offer_schema() -> Any:
    import re
    from pathlib import Path

    import pycddl

    text = (Path(__file__).resolve().parent.parent / "spec" / "handshake.md").read_text()
    cddl = "\n".join(re.findall(r"```cddl\n(.*?)```", text, re.S))
    # pycddl 0.6.4 mis-validates `* ext-key => any` (see tests/interop/test_vectors.py).
    cddl = re.sub(r",(\s*(;[^\n]*)?\n)?\s*\*\s*ext-key\s*=>\s*any", "", cddl)
    return pycddl.Schema(f"m2m-vector-root = offer\n{cddl}")


def test_offers_conform_to_the_spec_cddl() -> None:
    from m2mproto import cbor

    schema = _offer_schema()
    for t in DATA["transcripts"]:
        schema.validate_cbor(bytes.fromhex(t["offer_cbor"]))
    schema.validate_cbor(cbor.encode({1: [1], 2: "XX", 512: ["XXhfs", "XX"]}))  # fallback
    schema.validate_cbor(cbor.encode({1: [1], 2: "XX"}))  # classical, unchanged
    bad_offers = (
        {1: [1], 2: "NNhfs"},
        {1: [1], 2: "XXhfs", 512: "XXhfs"},
        {1: [1], 2: "XX", 512: []},
    )
    for bad in bad_offers:
        with pytest.raises(Exception):  # noqa: B017 - pycddl's ValidationError
            schema.validate_cbor(cbor.encode(bad))
