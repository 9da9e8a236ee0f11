"""Asymmetric and HMAC keys of Cloister's key service, driven by boto3 and the AWS CLI and checked
independently with `cryptography` (signatures, RSAES-OAEP, ECDH) and OpenSSL (CiphertextForRecipient).

Run by crates/kms/tests/asymmetric.rs, which starts the server and passes, in the environment:
KMS_ENDPOINT, ADMIN_AKID, ADMIN_SECRET, DOC_A (an attestation document of an enclave whose key is
ENCLAVE_KEY_PEM, a PEM RSA private key).

Each check raises on failure; the script prints one line per check and a summary.
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

ENDPOINT = os.environ["KMS_ENDPOINT"]
REGION = "us-east-1"
CFG = Config(retries={"max_attempts": 1, "mode": "standard"}, region_name=REGION)

kms = boto3.client(
    "kms",
    endpoint_url=ENDPOINT,
    aws_access_key_id=os.environ["ADMIN_AKID"],
    aws_secret_access_key=os.environ["ADMIN_SECRET"],
    config=CFG,
)

RESULTS = []


def check(fn):
    start = time.monotonic()
    try:
        fn()
        RESULTS.append((fn.__name__, None))
        print(f"ok   {fn.__name__} ({time.monotonic() - start:.1f}s)", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure
        RESULTS.append((fn.__name__, e))
        print(f"FAIL {fn.__name__}: {e!r}", flush=True)
        traceback.print_exc()
    return fn


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e.response['Error'].get('Message')}"
        return e
    raise AssertionError(f"expected {code}, call succeeded")


def new_key(spec, usage):
    m = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
    assert m["KeySpec"] == spec and m["CustomerMasterKeySpec"] == spec, m
    assert m["KeyUsage"] == usage, m
    return m


def public_key(key_id):
    r = kms.get_public_key(KeyId=key_id)
    return r, serialization.load_der_public_key(r["PublicKey"])


HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def local_verify(pub, alg, message, signature, prehashed=False):
    """Verifies a KMS signature with `cryptography`, as a client holding only the public key."""
    h = HASHES[alg[-3:]]()
    data, algo = message, h
    if prehashed:
        algo = utils.Prehashed(h)
    if alg.startswith("ECDSA"):
        pub.verify(signature, data, ec.ECDSA(algo))
    elif alg.startswith("RSASSA_PSS"):
        pub.verify(signature, data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), algo)
    else:
        pub.verify(signature, data, padding.PKCS1v15(), algo)


def flip(b, i=-1):
    b = bytearray(b)
    b[i] ^= 0x01
    return bytes(b)


# ---------------------------------------------------------------- Sign / Verify


@check
def ecc_sign_verify_every_curve():
    curves = {
        "ECC_NIST_P256": ("ECDSA_SHA_256", ec.SECP256R1),
        "ECC_NIST_P384": ("ECDSA_SHA_384", ec.SECP384R1),
        "ECC_NIST_P521": ("ECDSA_SHA_512", ec.SECP521R1),
        "ECC_SECG_P256K1": ("ECDSA_SHA_256", ec.SECP256K1),
    }
    msg = b"message signed by the key service"
    for spec, (alg, curve) in curves.items():
        kid = new_key(spec, "SIGN_VERIFY")["KeyId"]
        r, pub = public_key(kid)
        assert isinstance(pub.curve, curve), (spec, pub.curve)
        assert r["SigningAlgorithms"] == [alg] and r["KeyUsage"] == "SIGN_VERIFY", r
        assert "EncryptionAlgorithms" not in r
        s = kms.sign(KeyId=kid, Message=msg, MessageType="RAW", SigningAlgorithm=alg)
        assert s["SigningAlgorithm"] == alg and s["KeyId"].endswith(kid)
        local_verify(pub, alg, msg, s["Signature"])
        v = kms.verify(KeyId=kid, Message=msg, Signature=s["Signature"], SigningAlgorithm=alg)
        assert v["SignatureValid"] is True
        # DIGEST: the caller hashes; the signature is the same kind.
        digest = hashlib.new("sha" + alg[-3:], msg).digest()
        d = kms.sign(KeyId=kid, Message=digest, MessageType="DIGEST", SigningAlgorithm=alg)
        local_verify(pub, alg, msg, d["Signature"])
        local_verify(pub, alg, digest, d["Signature"], prehashed=True)
        kms.verify(KeyId=kid, Message=digest, MessageType="DIGEST", Signature=s["Signature"], SigningAlgorithm=alg)
        # A tampered signature or message is refused by KMS and by cryptography alike.
        bad = flip(s["Signature"], 10)
        expect_error("KMSInvalidSignatureException", kms.verify, KeyId=kid, Message=msg,
                     Signature=bad, SigningAlgorithm=alg)
        expect_error("KMSInvalidSignatureException", kms.verify, KeyId=kid, Message=msg + b"!",
                     Signature=s["Signature"], SigningAlgorithm=alg)
        try:
            local_verify(pub, alg, msg, bad)
            raise AssertionError("tampered signature verified locally")
        except (InvalidSignature, ValueError):
            pass
        expect_error("ValidationException", kms.sign, KeyId=kid, Message=b"short", MessageType="DIGEST",
                     SigningAlgorithm=alg)
        other = "ECDSA_SHA_384" if alg != "ECDSA_SHA_384" else "ECDSA_SHA_256"
        expect_error("InvalidKeyUsageException", kms.sign, KeyId=kid, Message=msg, SigningAlgorithm=other)


@check
def rsa_sign_verify_every_algorithm():
    msg = b"rsa message"
    kid = new_key("RSA_2048", "SIGN_VERIFY")["KeyId"]
    r, pub = public_key(kid)
    assert pub.key_size == 2048
    algs = r["SigningAlgorithms"]
    assert sorted(algs) == sorted([
        "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
        "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
    ]), algs
    for alg in algs:
        s = kms.sign(KeyId=kid, Message=msg, SigningAlgorithm=alg)["Signature"]
        assert len(s) == 256
        local_verify(pub, alg, msg, s)
        assert kms.verify(KeyId=kid, Message=msg, Signature=s, SigningAlgorithm=alg)["SignatureValid"]
        expect_error("KMSInvalidSignatureException", kms.verify, KeyId=kid, Message=msg,
                     Signature=flip(s), SigningAlgorithm=alg)
        digest = hashlib.new("sha" + alg[-3:], msg).digest()
        d = kms.sign(KeyId=kid, Message=digest, MessageType="DIGEST", SigningAlgorithm=alg)["Signature"]
        local_verify(pub, alg, msg, d)
    # A larger modulus signs too.
    kid3 = new_key("RSA_3072", "SIGN_VERIFY")["KeyId"]
    _, pub3 = public_key(kid3)
    s = kms.sign(KeyId=kid3, Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_384")["Signature"]
    assert len(s) == 384
    local_verify(pub3, "RSASSA_PSS_SHA_384", msg, s)
    expect_error("InvalidKeyUsageException", kms.sign, KeyId=kid, Message=msg, SigningAlgorithm="ECDSA_SHA_256")
    expect_error("ValidationException", kms.sign, KeyId=kid, Message=b"x" * 4097, SigningAlgorithm="RSASSA_PSS_SHA_256")


# ---------------------------------------------------------------- RSA encryption


def openssl_open(cms_der):
    with tempfile.NamedTemporaryFile(suffix=".der") as f:
        f.write(cms_der)
        f.flush()
        out = subprocess.run(
            ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", f.name,
             "-inkey", os.environ["ENCLAVE_KEY_PEM"], "-binary"],
            capture_output=True, check=False,
        )
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


def recipient():
    with open(os.environ["DOC_A"], "rb") as f:
        doc = f.read()
    return {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": doc}


@check
def rsa_encrypt_locally_decrypt_in_kms():
    for spec, size in (("RSA_2048", 2048), ("RSA_4096", 4096)):
        m = new_key(spec, "ENCRYPT_DECRYPT")
        assert m["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"], m
        kid = m["KeyId"]
        r, pub = public_key(kid)
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == size
        for alg, h in (("RSAES_OAEP_SHA_1", hashes.SHA1), ("RSAES_OAEP_SHA_256", hashes.SHA256)):
            pad = padding.OAEP(mgf=padding.MGF1(algorithm=h()), algorithm=h(), label=None)
            ct = pub.encrypt(b"secret for " + spec.encode(), pad)
            d = kms.decrypt(KeyId=kid, CiphertextBlob=ct, EncryptionAlgorithm=alg)
            assert d["Plaintext"] == b"secret for " + spec.encode()
            assert d["EncryptionAlgorithm"] == alg
            # KMS Encrypt yields the same kind of ciphertext.
            e = kms.encrypt(KeyId=kid, Plaintext=b"round trip", EncryptionAlgorithm=alg)
            assert len(e["CiphertextBlob"]) == size // 8
            assert kms.decrypt(KeyId=kid, CiphertextBlob=e["CiphertextBlob"],
                               EncryptionAlgorithm=alg)["Plaintext"] == b"round trip"
            expect_error("InvalidCiphertextException", kms.decrypt, KeyId=kid, CiphertextBlob=flip(ct),
                         EncryptionAlgorithm=alg)
        expect_error("InvalidKeyUsageException", kms.encrypt, KeyId=kid, Plaintext=b"x")
        expect_error("ValidationException", kms.encrypt, KeyId=kid, Plaintext=b"x" * 500,
                     EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    # Decrypt with a Recipient: the plaintext is sealed to the enclave, which OpenSSL opens.
    pad = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ct = pub.encrypt(b"for the enclave", pad)
    d = kms.decrypt(KeyId=kid, CiphertextBlob=ct, EncryptionAlgorithm="RSAES_OAEP_SHA_256",
                    Recipient=recipient())
    assert "Plaintext" not in d, d
    assert openssl_open(d["CiphertextForRecipient"]) == b"for the enclave"


# ---------------------------------------------------------------- ECDH


@check
def derive_shared_secret_matches_local_ecdh():
    for spec, curve in (("ECC_NIST_P256", ec.SECP256R1), ("ECC_NIST_P384", ec.SECP384R1),
                        ("ECC_NIST_P521", ec.SECP521R1)):
        m = new_key(spec, "KEY_AGREEMENT")
        assert m["KeyAgreementAlgorithms"] == ["ECDH"], m
        kid = m["KeyId"]
        _, kms_pub = public_key(kid)
        mine = ec.generate_private_key(curve())
        my_spki = mine.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        r = kms.derive_shared_secret(KeyId=kid, KeyAgreementAlgorithm="ECDH", PublicKey=my_spki)
        local = mine.exchange(ec.ECDH(), kms_pub)
        assert r["SharedSecret"] == local, spec
        assert r["KeyAgreementAlgorithm"] == "ECDH" and r["KeyOrigin"] == "AWS_KMS"
        # With a Recipient the secret goes only to the enclave.
        r = kms.derive_shared_secret(KeyId=kid, KeyAgreementAlgorithm="ECDH", PublicKey=my_spki,
                                     Recipient=recipient())
        assert "SharedSecret" not in r
        assert openssl_open(r["CiphertextForRecipient"]) == local
        expect_error("InvalidKeyUsageException", kms.sign, KeyId=kid, Message=b"m",
                     SigningAlgorithm="ECDSA_SHA_256")
    other = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    expect_error("ValidationException", kms.derive_shared_secret, KeyId=kid,
                 KeyAgreementAlgorithm="ECDH", PublicKey=other)
    signing = new_key("ECC_NIST_P256", "SIGN_VERIFY")["KeyId"]
    expect_error("InvalidKeyUsageException", kms.derive_shared_secret, KeyId=signing,
                 KeyAgreementAlgorithm="ECDH", PublicKey=my_spki)


# ---------------------------------------------------------------- HMAC


@check
def hmac_generate_and_verify():
    for spec, alg, n in (("HMAC_224", "HMAC_SHA_224", 28), ("HMAC_256", "HMAC_SHA_256", 32),
                         ("HMAC_384", "HMAC_SHA_384", 48), ("HMAC_512", "HMAC_SHA_512", 64)):
        m = new_key(spec, "GENERATE_VERIFY_MAC")
        assert m["MacAlgorithms"] == [alg], m
        kid = m["KeyId"]
        r = kms.generate_mac(KeyId=kid, Message=b"authenticated", MacAlgorithm=alg)
        mac = r["Mac"]
        assert len(mac) == n and r["MacAlgorithm"] == alg
        assert kms.generate_mac(KeyId=kid, Message=b"authenticated", MacAlgorithm=alg)["Mac"] == mac
        v = kms.verify_mac(KeyId=kid, Message=b"authenticated", MacAlgorithm=alg, Mac=mac)
        assert v["MacValid"] is True
        expect_error("KMSInvalidMacException", kms.verify_mac, KeyId=kid, Message=b"authenticated",
                     MacAlgorithm=alg, Mac=flip(mac, 0))
        expect_error("KMSInvalidMacException", kms.verify_mac, KeyId=kid, Message=b"authenticatee",
                     MacAlgorithm=alg, Mac=mac)
        wrong = "HMAC_SHA_256" if alg != "HMAC_SHA_256" else "HMAC_SHA_512"
        expect_error("InvalidKeyUsageException", kms.generate_mac, KeyId=kid, Message=b"m", MacAlgorithm=wrong)
        expect_error("UnsupportedOperationException", kms.get_public_key, KeyId=kid)
        expect_error("InvalidKeyUsageException", kms.encrypt, KeyId=kid, Plaintext=b"m")


# ---------------------------------------------------------------- key rules


@check
def symmetric_only_operations_and_describe():
    kid = new_key("ECC_NIST_P256", "SIGN_VERIFY")["KeyId"]
    expect_error("InvalidKeyUsageException", kms.encrypt, KeyId=kid, Plaintext=b"x")
    expect_error("InvalidKeyUsageException", kms.generate_data_key, KeyId=kid, KeySpec="AES_256")
    expect_error("InvalidKeyUsageException", kms.generate_data_key_pair, KeyId=kid, KeyPairSpec="ECC_NIST_P256")
    expect_error("UnsupportedOperationException", kms.enable_key_rotation, KeyId=kid)
    expect_error("UnsupportedOperationException", kms.rotate_key_on_demand, KeyId=kid)
    sym = kms.create_key()["KeyMetadata"]["KeyId"]
    expect_error("UnsupportedOperationException", kms.get_public_key, KeyId=sym)
    expect_error("InvalidKeyUsageException", kms.sign, KeyId=sym, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    expect_error("ValidationException", kms.create_key, KeySpec="ECC_SECG_P256K1", KeyUsage="KEY_AGREEMENT")
    expect_error("ValidationException", kms.create_key, KeySpec="HMAC_256", KeyUsage="ENCRYPT_DECRYPT")
    d = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert d["SigningAlgorithms"] == ["ECDSA_SHA_256"] and d["KeySpec"] == "ECC_NIST_P256", d
    kms.disable_key(KeyId=kid)
    expect_error("DisabledException", kms.sign, KeyId=kid, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    kms.enable_key(KeyId=kid)
    e = expect_error("DryRunOperationException", kms.sign, KeyId=kid, Message=b"m",
                     SigningAlgorithm="ECDSA_SHA_256", DryRun=True)
    assert e is not None


@check
def data_key_pair_secp256k1():
    sym = kms.create_key()["KeyMetadata"]["KeyId"]
    r = kms.generate_data_key_pair(KeyId=sym, KeyPairSpec="ECC_SECG_P256K1")
    assert r["KeyPairSpec"] == "ECC_SECG_P256K1"
    private = serialization.load_der_private_key(r["PrivateKeyPlaintext"], password=None)
    assert isinstance(private.curve, ec.SECP256K1)
    public = serialization.load_der_public_key(r["PublicKey"])
    sig = private.sign(b"k1", ec.ECDSA(hashes.SHA256()))
    public.verify(sig, b"k1", ec.ECDSA(hashes.SHA256()))
    d = kms.decrypt(CiphertextBlob=r["PrivateKeyCiphertextBlob"])
    assert d["Plaintext"] == r["PrivateKeyPlaintext"]
    w = kms.generate_data_key_pair_without_plaintext(KeyId=sym, KeyPairSpec="ECC_SECG_P256K1")
    assert "PrivateKeyPlaintext" not in w


# ---------------------------------------------------------------- the AWS CLI


@check
def aws_cli_sign_and_verify():
    aws = shutil.which("aws")
    assert aws, "the AWS CLI is required (scripts/install-deps.sh installs it)"
    kid = new_key("ECC_NIST_P256", "SIGN_VERIFY")["KeyId"]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=os.environ["ADMIN_AKID"],
               AWS_SECRET_ACCESS_KEY=os.environ["ADMIN_SECRET"], AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    with tempfile.TemporaryDirectory() as d:
        msg = os.path.join(d, "msg")
        with open(msg, "wb") as f:
            f.write(b"signed through the CLI")

        def cli(*args):
            out = subprocess.run([aws, "--endpoint-url", ENDPOINT, "--output", "json", "kms", *args],
                                 capture_output=True, env=env, check=False)
            return out.returncode, out.stdout.decode(), out.stderr.decode()

        rc, out, err = cli("sign", "--key-id", kid, "--message", f"fileb://{msg}",
                           "--message-type", "RAW", "--signing-algorithm", "ECDSA_SHA_256")
        assert rc == 0, err
        sig_b64 = json.loads(out)["Signature"]
        sig = base64.b64decode(sig_b64)
        _, pub = public_key(kid)
        local_verify(pub, "ECDSA_SHA_256", b"signed through the CLI", sig)
        sig_file = os.path.join(d, "sig")
        with open(sig_file, "wb") as f:
            f.write(sig)
        rc, out, err = cli("verify", "--key-id", kid, "--message", f"fileb://{msg}",
                           "--signature", f"fileb://{sig_file}", "--signing-algorithm", "ECDSA_SHA_256")
        assert rc == 0, err
        assert json.loads(out)["SignatureValid"] is True
        with open(sig_file, "wb") as f:
            f.write(flip(sig, 8))
        rc, out, err = cli("verify", "--key-id", kid, "--message", f"fileb://{msg}",
                           "--signature", f"fileb://{sig_file}", "--signing-algorithm", "ECDSA_SHA_256")
        assert rc != 0 and "KMSInvalidSignatureException" in err, (rc, err)
        rc, out, err = cli("get-public-key", "--key-id", kid)
        assert rc == 0 and json.loads(out)["KeySpec"] == "ECC_NIST_P256", err


@check
def re_encrypt_between_rsa_and_symmetric_keys():
    rsa_a = new_key("RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    rsa_b = new_key("RSA_3072", "ENCRYPT_DECRYPT")["KeyId"]
    sym = kms.create_key()["KeyMetadata"]["KeyId"]
    _, pub_a = public_key(rsa_a)
    oaep256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    # RSA (encrypted locally by cryptography) -> symmetric, then Decrypt.
    ct = pub_a.encrypt(b"moved between keys", oaep256)
    r = kms.re_encrypt(CiphertextBlob=ct, SourceKeyId=rsa_a, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
                       DestinationKeyId=sym, DestinationEncryptionContext={"purpose": "test"})
    assert r["SourceEncryptionAlgorithm"] == "RSAES_OAEP_SHA_256", r
    assert r["DestinationEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT", r
    assert r["SourceKeyId"].endswith(rsa_a) and r["KeyId"].endswith(sym), r
    d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"purpose": "test"})
    assert d["Plaintext"] == b"moved between keys"
    # Symmetric -> RSA (SHA-1 OAEP), then Decrypt with the RSA key.
    sealed = kms.encrypt(KeyId=sym, Plaintext=b"to an rsa key", EncryptionContext={"k": "v"})["CiphertextBlob"]
    r = kms.re_encrypt(CiphertextBlob=sealed, SourceEncryptionContext={"k": "v"}, DestinationKeyId=rsa_b,
                       DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    assert r["SourceEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT", r
    assert r["DestinationEncryptionAlgorithm"] == "RSAES_OAEP_SHA_1", r
    assert len(r["CiphertextBlob"]) == 3072 // 8
    assert kms.decrypt(KeyId=rsa_b, CiphertextBlob=r["CiphertextBlob"],
                       EncryptionAlgorithm="RSAES_OAEP_SHA_1")["Plaintext"] == b"to an rsa key"
    # RSA -> RSA.
    r = kms.re_encrypt(CiphertextBlob=ct, SourceKeyId=rsa_a, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
                       DestinationKeyId=rsa_b, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert kms.decrypt(KeyId=rsa_b, CiphertextBlob=r["CiphertextBlob"],
                       EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == b"moved between keys"
    # AWS's rules: an RSA source names its key; an RSA side takes no encryption context; an RSA
    # destination needs an RSA algorithm; a symmetric destination refuses an RSA algorithm.
    expect_error("ValidationException", kms.re_encrypt, CiphertextBlob=ct,
                 SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", DestinationKeyId=sym)
    expect_error("ValidationException", kms.re_encrypt, CiphertextBlob=sealed, SourceEncryptionContext={"k": "v"},
                 DestinationKeyId=rsa_b, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256",
                 DestinationEncryptionContext={"not": "allowed"})
    expect_error("InvalidKeyUsageException", kms.re_encrypt, CiphertextBlob=sealed,
                 SourceEncryptionContext={"k": "v"}, DestinationKeyId=rsa_b)
    expect_error("InvalidKeyUsageException", kms.re_encrypt, CiphertextBlob=ct, SourceKeyId=rsa_a,
                 SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", DestinationKeyId=sym,
                 DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    # The wrong padding does not open the ciphertext.
    expect_error("InvalidCiphertextException", kms.re_encrypt, CiphertextBlob=ct, SourceKeyId=rsa_a,
                 SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1", DestinationKeyId=sym)


failed = [n for n, e in RESULTS if e is not None]
print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
