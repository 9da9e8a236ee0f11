#!/usr/bin/env python3
"""Independent checker for Cloister (and AWS Nitro) attestation documents.

Verifies, without any Cloister code: the COSE_Sign1 structure (untagged or tag 18), the ES384
protected header, the chain leaf -> cabundle[last..1] -> cabundle[0] == the given root (byte for
byte), each certificate's validity now (or at --at-ms), CA flags, and every ECDSA signature, then
the COSE signature over Sig_structure with the leaf key. Prints a JSON summary and exits 0 on
success; prints the reason and exits 1 on failure.

Usage: verify_document.py DOCUMENT ROOT_DER [--at-ms MS] [--nonce HEX]
"""
import argparse
import datetime
import json
import sys

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def fail(msg):
    print(f"verification failed: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("document")
    ap.add_argument("root")
    ap.add_argument("--at-ms", type=int)
    ap.add_argument("--nonce")
    args = ap.parse_args()

    raw = open(args.document, "rb").read()
    root_der = open(args.root, "rb").read()
    at = (
        datetime.datetime.fromtimestamp(args.at_ms / 1000, datetime.timezone.utc)
        if args.at_ms is not None
        else datetime.datetime.now(datetime.timezone.utc)
    )

    try:
        cose = cbor2.loads(raw)
    except Exception as e:  # noqa: BLE001
        fail(f"not CBOR: {e}")
    if isinstance(cose, cbor2.CBORTag):
        if cose.tag != 18:
            fail(f"unexpected tag {cose.tag}")
        cose = cose.value
    if not isinstance(cose, list) or len(cose) != 4:
        fail("not a 4-element COSE_Sign1 array")
    protected, unprotected, payload, signature = cose
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        fail("protected, payload and signature must be byte strings")
    if not isinstance(unprotected, dict):
        fail("unprotected header is not a map")
    header = cbor2.loads(protected)
    if header.get(1) != -35:
        fail(f"algorithm {header.get(1)!r} is not ES384")
    if len(signature) != 96:
        fail("signature is not 96 bytes")

    doc = cbor2.loads(payload)
    for field in ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"):
        if field not in doc:
            fail(f"missing {field}")
    if doc["digest"] != "SHA384":
        fail("digest is not SHA384")
    cabundle = doc["cabundle"]
    if not cabundle:
        fail("empty cabundle")
    if cabundle[0] != root_der:
        fail("cabundle[0] is not the pinned root")

    chain = [x509.load_der_x509_certificate(der) for der in cabundle]
    leaf = x509.load_der_x509_certificate(doc["certificate"])
    chain.append(leaf)
    for i, cert in enumerate(chain):
        if not (cert.not_valid_before_utc <= at <= cert.not_valid_after_utc):
            fail(f"{cert.subject.rfc4514_string()} not valid at {at}")
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_leaf = i == len(chain) - 1
        if bc.ca == is_leaf:
            fail(f"{cert.subject.rfc4514_string()}: wrong CA flag")
        if i > 0:
            issuer = chain[i - 1]
            if cert.issuer != issuer.subject:
                fail(f"{cert.subject.rfc4514_string()}: issuer mismatch")
            try:
                issuer.public_key().verify(
                    cert.signature,
                    cert.tbs_certificate_bytes,
                    ec.ECDSA(cert.signature_hash_algorithm),
                )
            except InvalidSignature:
                fail(f"{cert.subject.rfc4514_string()}: bad certificate signature")

    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    r = int.from_bytes(signature[:48], "big")
    s = int.from_bytes(signature[48:], "big")
    try:
        leaf.public_key().verify(
            encode_dss_signature(r, s), sig_structure, ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature:
        fail("bad document signature")

    if args.nonce is not None and (doc.get("nonce") or b"").hex() != args.nonce:
        fail("nonce mismatch")

    ous = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)]
    isolation = next((o.split("=", 1)[1] for o in ous if o.startswith("isolation=")), None)
    print(
        json.dumps(
            {
                "module_id": doc["module_id"],
                "timestamp": doc["timestamp"],
                "pcrs": {str(k): v.hex() for k, v in sorted(doc["pcrs"].items())},
                "isolation": isolation,
                "chain": [c.subject.rfc4514_string() for c in reversed(chain)],
                "verified": True,
            }
        )
    )


if __name__ == "__main__":
    main()
