"""Drives Cloister's key service with boto3 (an independent, real AWS client).

Run by crates/kms/tests/boto3.rs, which starts the server and passes, in the environment:
KMS_ENDPOINT, ADMIN_AKID, ADMIN_SECRET, APP_AKID, APP_SECRET, DOC_A, DOC_B (attestation
documents of process enclaves running images A and B, files), DOC_A_VM (image A in a VM enclave), IMAGE_A, IMAGE_B (their PCR0, hex), ENCLAVE_KEY_PEM (the
enclave's RSA private key, PEM), OUT_DIR (where CiphertextForRecipient blobs are written for the
Rust side to open with the SDK).

Each check raises on failure; the script prints one line per check and a summary.
"""

import base64
import datetime
import json
import os
import subprocess
import sys
import tempfile
import traceback
import urllib.error
import urllib.request
from unittest import mock

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization

ENDPOINT = os.environ["KMS_ENDPOINT"]
REGION = "us-east-1"
ACCOUNT = "111122223333"

CFG = Config(retries={"max_attempts": 1, "mode": "standard"}, region_name=REGION)


def client(akid, secret):
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        aws_session_token="ignored-session-token",
        config=CFG,
    )


admin = client(os.environ["ADMIN_AKID"], os.environ["ADMIN_SECRET"])
app = client(os.environ["APP_AKID"], os.environ["APP_SECRET"])

RESULTS = []


def check(fn):
    name = fn.__name__
    try:
        fn()
        RESULTS.append((name, None))
        print(f"ok   {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure
        RESULTS.append((name, e))
        print(f"FAIL {name}: {e!r}", flush=True)
        traceback.print_exc()
    return fn


def expect_error(code, fn, *args, status=None, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e.response['Error'].get('Message')}"
        if status is not None:
            s = e.response["ResponseMetadata"]["HTTPStatusCode"]
            assert s == status, f"expected HTTP {status}, got {s}"
        return e
    raise AssertionError(f"expected {code}, call succeeded")


def new_key(c=admin, **kw):
    return c.create_key(**kw)["KeyMetadata"]


def openssl_open(cms_der):
    """Opens CiphertextForRecipient with OpenSSL's CMS implementation (independent of ours)."""
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


def save(name, data):
    with open(os.path.join(os.environ["OUT_DIR"], name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- key management


@check
def create_and_describe():
    m = new_key(Description="first", Tags=[{"TagKey": "team", "TagValue": "core"}])
    assert m["KeyState"] == "Enabled" and m["Enabled"] is True
    assert m["Arn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{m['KeyId']}"
    assert m["KeySpec"] == "SYMMETRIC_DEFAULT" and m["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert isinstance(m["CreationDate"], datetime.datetime)
    for ref in (m["KeyId"], m["Arn"]):
        d = admin.describe_key(KeyId=ref)["KeyMetadata"]
        assert d["KeyId"] == m["KeyId"] and d["Description"] == "first"
    expect_error("NotFoundException", admin.describe_key,
                 KeyId="00000000-0000-4000-8000-000000000000")
    expect_error("NotFoundException", admin.describe_key, KeyId="alias/does-not-exist")


@check
def list_keys_paginates():
    ids = {new_key()["KeyId"] for _ in range(3)}
    seen, marker, pages = [], None, 0
    while True:
        kw = {"Limit": 2}
        if marker:
            kw["Marker"] = marker
        r = admin.list_keys(**kw)
        pages += 1
        seen += [k["KeyId"] for k in r["Keys"]]
        for k in r["Keys"]:
            assert k["KeyArn"].endswith(k["KeyId"])
        if not r["Truncated"]:
            assert "NextMarker" not in r
            break
        marker = r["NextMarker"]
    assert ids <= set(seen) and len(seen) == len(set(seen)) and pages >= 2
    # boto3's own paginator agrees.
    pag = [k["KeyId"] for p in admin.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1}) for k in p["Keys"]]
    assert pag == seen
    expect_error("ValidationException", admin.list_keys, Limit=1001)


@check
def enable_disable_and_deletion():
    k = new_key()["KeyId"]
    blob = admin.encrypt(KeyId=k, Plaintext=b"x")["CiphertextBlob"]
    admin.disable_key(KeyId=k)
    assert admin.describe_key(KeyId=k)["KeyMetadata"]["KeyState"] == "Disabled"
    expect_error("DisabledException", admin.encrypt, KeyId=k, Plaintext=b"x")
    expect_error("DisabledException", admin.decrypt, CiphertextBlob=blob)
    admin.enable_key(KeyId=k)
    assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    r = admin.schedule_key_deletion(KeyId=k, PendingWindowInDays=7)
    assert r["KeyState"] == "PendingDeletion" and r["PendingWindowInDays"] == 7
    assert isinstance(r["DeletionDate"], datetime.datetime)
    expect_error("KMSInvalidStateException", admin.decrypt, CiphertextBlob=blob)
    expect_error("KMSInvalidStateException", admin.enable_key, KeyId=k)
    expect_error("ValidationException", admin.schedule_key_deletion, KeyId=new_key()["KeyId"], PendingWindowInDays=3)
    assert admin.cancel_key_deletion(KeyId=k)["KeyId"].endswith(k)
    assert admin.describe_key(KeyId=k)["KeyMetadata"]["KeyState"] == "Disabled"
    expect_error("KMSInvalidStateException", admin.cancel_key_deletion, KeyId=k)


@check
def aliases():
    a = new_key()["KeyId"]
    b = new_key()["KeyId"]
    admin.create_alias(AliasName="alias/app-data", TargetKeyId=a)
    expect_error("AlreadyExistsException", admin.create_alias, AliasName="alias/app-data", TargetKeyId=b)
    expect_error("ValidationException", admin.create_alias, AliasName="no-prefix", TargetKeyId=b)
    expect_error("ValidationException", admin.create_alias, AliasName="alias/x", TargetKeyId="alias/app-data")
    assert admin.describe_key(KeyId="alias/app-data")["KeyMetadata"]["KeyId"] == a
    alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/app-data"
    assert admin.describe_key(KeyId=alias_arn)["KeyMetadata"]["KeyId"] == a
    blob = admin.encrypt(KeyId="alias/app-data", Plaintext=b"via alias")["CiphertextBlob"]
    admin.update_alias(AliasName="alias/app-data", TargetKeyId=b)
    assert admin.describe_key(KeyId="alias/app-data")["KeyMetadata"]["KeyId"] == b
    assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == b"via alias"
    for i in range(3):
        admin.create_alias(AliasName=f"alias/page-{i}", TargetKeyId=a)
    listed = admin.list_aliases(KeyId=a)["Aliases"]
    assert sorted(x["AliasName"] for x in listed) == ["alias/page-0", "alias/page-1", "alias/page-2"]
    assert all(x["TargetKeyId"] == a and x["AliasArn"].endswith(x["AliasName"]) for x in listed)
    names, marker = [], None
    while True:
        kw = {"Limit": 2}
        if marker:
            kw["Marker"] = marker
        r = admin.list_aliases(**kw)
        names += [x["AliasName"] for x in r["Aliases"]]
        if not r["Truncated"]:
            break
        marker = r["NextMarker"]
    assert {"alias/app-data", "alias/page-0", "alias/page-2"} <= set(names)
    admin.delete_alias(AliasName="alias/page-1")
    expect_error("NotFoundException", admin.delete_alias, AliasName="alias/page-1")
    expect_error("NotFoundException", admin.describe_key, KeyId="alias/page-1")


# ---------------------------------------------------------------- cryptography


@check
def encrypt_decrypt_with_context():
    k = new_key()["KeyId"]
    ctx = {"tenant": "t1", "purpose": "test"}
    r = admin.encrypt(KeyId=k, Plaintext=b"hello world", EncryptionContext=ctx)
    assert r["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT" and r["KeyId"].endswith(k)
    blob = r["CiphertextBlob"]
    d = admin.decrypt(CiphertextBlob=blob, EncryptionContext={"purpose": "test", "tenant": "t1"})
    assert d["Plaintext"] == b"hello world" and d["KeyId"].endswith(k)
    # KeyId is optional on Decrypt, but must name the right key if given.
    assert admin.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, KeyId=k)["Plaintext"] == b"hello world"
    expect_error("IncorrectKeyException", admin.decrypt, CiphertextBlob=blob, EncryptionContext=ctx, KeyId=new_key()["KeyId"])
    expect_error("InvalidCiphertextException", admin.decrypt, CiphertextBlob=blob)
    expect_error("InvalidCiphertextException", admin.decrypt, CiphertextBlob=blob, EncryptionContext={"tenant": "t2", "purpose": "test"})
    tampered = bytearray(blob)
    tampered[-5] ^= 1
    expect_error("InvalidCiphertextException", admin.decrypt, CiphertextBlob=bytes(tampered), EncryptionContext=ctx)
    expect_error("InvalidCiphertextException", admin.decrypt, CiphertextBlob=b"\x01" + b"\x00" * 60)
    assert admin.encrypt(KeyId=k, Plaintext=b"a" * 4096)["CiphertextBlob"]
    expect_error("ValidationException", admin.encrypt, KeyId=k, Plaintext=b"a" * 4097)


@check
def re_encrypt():
    a, b = new_key()["KeyId"], new_key()["KeyId"]
    blob = admin.encrypt(KeyId=a, Plaintext=b"move me", EncryptionContext={"x": "1"})["CiphertextBlob"]
    r = admin.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"x": "1"},
                         DestinationKeyId=b, DestinationEncryptionContext={"y": "2"})
    assert r["SourceKeyId"].endswith(a) and r["KeyId"].endswith(b)
    d = admin.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"y": "2"})
    assert d["Plaintext"] == b"move me" and d["KeyId"].endswith(b)


@check
def data_keys():
    k = new_key()["KeyId"]
    r = admin.generate_data_key(KeyId=k, KeySpec="AES_256", EncryptionContext={"f": "1"})
    assert len(r["Plaintext"]) == 32
    assert admin.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"f": "1"})["Plaintext"] == r["Plaintext"]
    assert len(admin.generate_data_key(KeyId=k, NumberOfBytes=100)["Plaintext"]) == 100
    assert len(admin.generate_data_key(KeyId=k, KeySpec="AES_128")["Plaintext"]) == 16
    expect_error("ValidationException", admin.generate_data_key, KeyId=k)
    w = admin.generate_data_key_without_plaintext(KeyId=k, KeySpec="AES_256")
    assert "Plaintext" not in w
    assert len(admin.decrypt(CiphertextBlob=w["CiphertextBlob"])["Plaintext"]) == 32


@check
def data_key_pairs():
    k = new_key()["KeyId"]
    for spec in ["RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384"]:
        r = admin.generate_data_key_pair(KeyId=k, KeyPairSpec=spec)
        assert r["KeyPairSpec"] == spec
        priv = serialization.load_der_private_key(r["PrivateKeyPlaintext"], password=None)
        pub = serialization.load_der_public_key(r["PublicKey"])
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert priv.public_key().public_bytes(*fmt) == pub.public_bytes(*fmt), spec
        again = admin.decrypt(CiphertextBlob=r["PrivateKeyCiphertextBlob"])["Plaintext"]
        assert again == r["PrivateKeyPlaintext"], spec
    w = admin.generate_data_key_pair_without_plaintext(KeyId=k, KeyPairSpec="ECC_NIST_P256")
    assert "PrivateKeyPlaintext" not in w and w["PublicKey"]
    expect_error("ValidationException", admin.generate_data_key_pair, KeyId=k, KeyPairSpec="RSA_1024")


@check
def random_bytes():
    r = admin.generate_random(NumberOfBytes=64)["Plaintext"]
    assert len(r) == 64 and r != admin.generate_random(NumberOfBytes=64)["Plaintext"]
    expect_error("ValidationException", admin.generate_random, NumberOfBytes=1025)


@check
def rotation_keeps_old_ciphertexts():
    k = new_key()["KeyId"]
    old = admin.encrypt(KeyId=k, Plaintext=b"before rotation")["CiphertextBlob"]
    assert admin.get_key_rotation_status(KeyId=k)["KeyRotationEnabled"] is False
    admin.enable_key_rotation(KeyId=k, RotationPeriodInDays=180)
    st = admin.get_key_rotation_status(KeyId=k)
    assert st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 180
    admin.rotate_key_on_demand(KeyId=k)
    new = admin.encrypt(KeyId=k, Plaintext=b"after rotation")["CiphertextBlob"]
    assert admin.decrypt(CiphertextBlob=old)["Plaintext"] == b"before rotation"
    assert admin.decrypt(CiphertextBlob=new)["Plaintext"] == b"after rotation"
    admin.disable_key_rotation(KeyId=k)
    assert admin.get_key_rotation_status(KeyId=k)["KeyRotationEnabled"] is False


# ---------------------------------------------------------------- policies and tags


@check
def policies():
    k = new_key()["KeyId"]
    default = json.loads(admin.get_key_policy(KeyId=k, PolicyName="default")["Policy"])
    st = default["Statement"][0]
    assert st["Principal"]["AWS"] == f"arn:aws:iam::{ACCOUNT}:root" and st["Action"] == "kms:*"
    assert admin.list_key_policies(KeyId=k)["PolicyNames"] == ["default"]
    # The account principal covers the app user too.
    app.encrypt(KeyId=k, Plaintext=b"x")
    pol = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "no-app-encrypt", "Effect": "Deny", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/app"},
             "Action": ["kms:Encrypt", "kms:GenerateDataKey*"], "Resource": "*"},
        ],
    }
    admin.put_key_policy(KeyId=k, PolicyName="default", Policy=json.dumps(pol))
    assert json.loads(admin.get_key_policy(KeyId=k, PolicyName="default")["Policy"]) == pol
    expect_error("AccessDeniedException", app.encrypt, KeyId=k, Plaintext=b"x")
    expect_error("AccessDeniedException", app.generate_data_key, KeyId=k, KeySpec="AES_256")
    admin.encrypt(KeyId=k, Plaintext=b"x")
    for bad in ["{", "[]", json.dumps({"Statement": [{"Effect": "Perhaps", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}),
                json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*",
                                           "Condition": {"NumericLessThan": {"a": "1"}}}]})]:
        expect_error("MalformedPolicyDocumentException", admin.put_key_policy, KeyId=k, PolicyName="default", Policy=bad)
    expect_error("MalformedPolicyDocumentException", admin.create_key, Policy="{}")
    expect_error("NotFoundException", admin.get_key_policy, KeyId=k, PolicyName="other")


@check
def encryption_context_conditions():
    pol = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringNotEquals": {"kms:EncryptionContext:tenant": "t1"}}},
    ]}
    k = new_key(Policy=json.dumps(pol))["KeyId"]
    b1 = admin.encrypt(KeyId=k, Plaintext=b"1", EncryptionContext={"tenant": "t1"})["CiphertextBlob"]
    b2 = admin.encrypt(KeyId=k, Plaintext=b"2", EncryptionContext={"tenant": "t2"})["CiphertextBlob"]
    assert admin.decrypt(CiphertextBlob=b1, EncryptionContext={"tenant": "t1"})["Plaintext"] == b"1"
    expect_error("AccessDeniedException", admin.decrypt, CiphertextBlob=b2, EncryptionContext={"tenant": "t2"})


@check
def encryption_context_deny_without_context():
    pol = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
         "Condition": {"StringNotEquals": {"kms:EncryptionContext:tenant": "a"}}},
    ]}
    k = new_key(Policy=json.dumps(pol))["KeyId"]
    # No encryption context: the key is absent, StringNotEquals holds, the Deny applies.
    expect_error("AccessDeniedException", admin.encrypt, KeyId=k, Plaintext=b"x")
    expect_error("AccessDeniedException", admin.encrypt, KeyId=k, Plaintext=b"x", EncryptionContext={"other": "a"})
    expect_error("AccessDeniedException", admin.encrypt, KeyId=k, Plaintext=b"x", EncryptionContext={"tenant": "b"})
    blob = admin.encrypt(KeyId=k, Plaintext=b"x", EncryptionContext={"tenant": "a"})["CiphertextBlob"]
    expect_error("AccessDeniedException", admin.decrypt, CiphertextBlob=blob)
    assert admin.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "a"})["Plaintext"] == b"x"


def lockout_policies():
    root = f"arn:aws:iam::{ACCOUNT}:root"
    only_other = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/other"}, "Action": "kms:*", "Resource": "*"}]}
    no_put = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:PutKeyPolicy", "Resource": "*"}]}
    return [json.dumps(only_other), json.dumps(no_put)]


@check
def policy_lockout_safety_check():
    k = new_key()["KeyId"]
    for p in lockout_policies():
        e = expect_error("MalformedPolicyDocumentException", admin.put_key_policy, KeyId=k, PolicyName="default", Policy=p)
        assert "update the key policy in the future" in e.response["Error"]["Message"], e.response
        expect_error("MalformedPolicyDocumentException", admin.put_key_policy, KeyId=k, PolicyName="default",
                     Policy=p, BypassPolicyLockoutSafetyCheck=False)
        e = expect_error("MalformedPolicyDocumentException", admin.create_key, Policy=p)
        assert "update the key policy in the future" in e.response["Error"]["Message"], e.response
    # The refused policies were not stored.
    assert json.loads(admin.get_key_policy(KeyId=k, PolicyName="default")["Policy"])["Statement"][0]["Action"] == "kms:*"
    # With the bypass they are accepted, and then lock the caller out.
    only_other, no_put = lockout_policies()
    c = admin.create_key(Policy=only_other, BypassPolicyLockoutSafetyCheck=True)["KeyMetadata"]["KeyId"]
    expect_error("AccessDeniedException", admin.describe_key, KeyId=c)
    admin.put_key_policy(KeyId=k, PolicyName="default", Policy=no_put, BypassPolicyLockoutSafetyCheck=True)
    assert admin.get_key_policy(KeyId=k, PolicyName="default")["Policy"] == no_put
    expect_error("AccessDeniedException", admin.put_key_policy, KeyId=k, PolicyName="default",
                 Policy=lockout_policies()[0], BypassPolicyLockoutSafetyCheck=True)


@check
def dry_run():
    k = new_key()["KeyId"]
    blob = admin.encrypt(KeyId=k, Plaintext=b"dry", EncryptionContext={"a": "1"})["CiphertextBlob"]
    e = expect_error("DryRunOperationException", admin.encrypt, KeyId=k, Plaintext=b"x", DryRun=True, status=400)
    assert "DryRun" in e.response["Error"]["Message"], e.response
    expect_error("DryRunOperationException", admin.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "1"},
                 DryRun=True, status=400)
    expect_error("DryRunOperationException", admin.generate_data_key, KeyId=k, KeySpec="AES_256", DryRun=True)
    expect_error("DryRunOperationException", admin.re_encrypt, CiphertextBlob=blob,
                 SourceEncryptionContext={"a": "1"}, DestinationKeyId=k, DryRun=True)
    # A request that would fail gets the real error.
    expect_error("InvalidCiphertextException", admin.decrypt, CiphertextBlob=blob, DryRun=True)
    expect_error("NotFoundException", admin.encrypt, KeyId="alias/no-such-key", Plaintext=b"x", DryRun=True)
    locked = admin.create_key(Policy=lockout_policies()[0], BypassPolicyLockoutSafetyCheck=True)["KeyMetadata"]["KeyId"]
    expect_error("AccessDeniedException", admin.encrypt, KeyId=locked, Plaintext=b"x", DryRun=True)
    # DryRun=False is an ordinary call.
    assert admin.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"}, DryRun=False)["Plaintext"] == b"dry"


@check
def tags():
    k = new_key(Tags=[{"TagKey": "a", "TagValue": "1"}])["KeyId"]
    admin.tag_resource(KeyId=k, Tags=[{"TagKey": "b", "TagValue": "2"}, {"TagKey": "a", "TagValue": "one"}])
    t = {x["TagKey"]: x["TagValue"] for x in admin.list_resource_tags(KeyId=k)["Tags"]}
    assert t == {"a": "one", "b": "2"}
    admin.tag_resource(KeyId=k, Tags=[{"TagKey": f"k{i}", "TagValue": "v"} for i in range(10)])
    seen, marker = [], None
    while True:
        kw = {"KeyId": k, "Limit": 5}
        if marker:
            kw["Marker"] = marker
        r = admin.list_resource_tags(**kw)
        seen += [x["TagKey"] for x in r["Tags"]]
        if not r["Truncated"]:
            break
        marker = r["NextMarker"]
    assert len(seen) == 12 and len(set(seen)) == 12
    admin.untag_resource(KeyId=k, TagKeys=["a"] + [f"k{i}" for i in range(10)])
    assert admin.list_resource_tags(KeyId=k)["Tags"] == [{"TagKey": "b", "TagValue": "2"}]
    expect_error("TagException", admin.tag_resource, KeyId=k, Tags=[{"TagKey": "aws:reserved", "TagValue": "x"}])


# ---------------------------------------------------------------- Recipient (attestation)


def read(path):
    with open(path, "rb") as f:
        return f.read()


DOC_A = read(os.environ["DOC_A"])
DOC_B = read(os.environ["DOC_B"])
DOC_A_VM = read(os.environ["DOC_A_VM"])
IMAGE_A = os.environ["IMAGE_A"]
IMAGE_B = os.environ["IMAGE_B"]


def enclave_policy():
    root = f"arn:aws:iam::{ACCOUNT}:root"
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": root},
         "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                    "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
                    "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:Encrypt"],
         "Resource": "*"},
        {"Sid": "enclave-image-a", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair"], "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": IMAGE_A.upper()}}},
        {"Sid": "never-image-b", "Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": IMAGE_B}}},
    ]})


def recipient(doc):
    return {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": doc}


@check
def recipient_decrypt_allowed_image_and_denied_image():
    k = new_key(Policy=enclave_policy())["KeyId"]
    blob = admin.encrypt(KeyId=k, Plaintext=b"enclave secret", EncryptionContext={"app": "e"})["CiphertextBlob"]
    # Without an attestation document the condition has no value: denied.
    expect_error("AccessDeniedException", app.decrypt, CiphertextBlob=blob, EncryptionContext={"app": "e"})
    r = app.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "e"}, Recipient=recipient(DOC_A))
    assert "Plaintext" not in r, r.keys()
    cms = r["CiphertextForRecipient"]
    assert cms[0] == 0x30
    assert openssl_open(cms) == b"enclave secret"
    save("decrypt.cms", cms)
    # Again (cached verification), same result.
    r2 = app.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "e"}, Recipient=recipient(DOC_A))
    assert openssl_open(r2["CiphertextForRecipient"]) == b"enclave secret"
    e = expect_error("AccessDeniedException", app.decrypt, CiphertextBlob=blob,
                     EncryptionContext={"app": "e"}, Recipient=recipient(DOC_B))
    assert "kms:Decrypt" in e.response["Error"]["Message"]


# The README's hardware-boundary statement (Key service section), after an Allow for the account.
HARDWARE_BOUNDARY = {"Sid": "vm-only", "Effect": "Deny", "Principal": "*",
                     "Action": ["kms:Decrypt", "kms:ReEncrypt*"], "Resource": "*",
                     "Condition": {"StringNotEquals": {"cloister:RecipientAttestation:Isolation": ["vm", "nitro"]}}}


@check
def recipient_isolation_condition():
    root = f"arn:aws:iam::{ACCOUNT}:root"
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:*", "Resource": "*"},
        HARDWARE_BOUNDARY,
    ]})
    k = new_key(Policy=policy)["KeyId"]
    blob = admin.encrypt(KeyId=k, Plaintext=b"vm secret")["CiphertextBlob"]
    r = app.decrypt(CiphertextBlob=blob, Recipient=recipient(DOC_A_VM))
    assert "Plaintext" not in r
    assert openssl_open(r["CiphertextForRecipient"]) == b"vm secret"
    # The same image in a process enclave is refused by the Deny.
    expect_error("AccessDeniedException", app.decrypt, CiphertextBlob=blob, Recipient=recipient(DOC_A))
    # So is a Decrypt with no Recipient at all: the negated condition holds on the absent key.
    expect_error("AccessDeniedException", app.decrypt, CiphertextBlob=blob)
    expect_error("AccessDeniedException", admin.decrypt, CiphertextBlob=blob)
    # And moving the ciphertext to a key without the Deny.
    expect_error("AccessDeniedException", admin.re_encrypt, CiphertextBlob=blob, DestinationKeyId=new_key()["KeyId"])
    # DryRun answers the same way without releasing anything.
    expect_error("DryRunOperationException", app.decrypt, CiphertextBlob=blob, Recipient=recipient(DOC_A_VM), DryRun=True)
    expect_error("AccessDeniedException", app.decrypt, CiphertextBlob=blob, Recipient=recipient(DOC_A), DryRun=True)
    expect_error("AccessDeniedException", app.decrypt, CiphertextBlob=blob, DryRun=True)
    # A typo in a cloister: key is a malformed policy, not a silently dead condition.
    bad = policy.replace("Isolation", "Isolaton")
    expect_error("MalformedPolicyDocumentException", admin.put_key_policy, KeyId=k, PolicyName="default", Policy=bad)


@check
def recipient_data_key_pair_and_random():
    k = new_key(Policy=enclave_policy())["KeyId"]
    r = app.generate_data_key(KeyId=k, KeySpec="AES_256", Recipient=recipient(DOC_A))
    assert "Plaintext" not in r and r["CiphertextBlob"]
    dk = openssl_open(r["CiphertextForRecipient"])
    assert len(dk) == 32
    save("datakey.cms", r["CiphertextForRecipient"])
    save("datakey.plain", dk)
    expect_error("AccessDeniedException", app.generate_data_key, KeyId=k, KeySpec="AES_256", Recipient=recipient(DOC_B))
    p = app.generate_data_key_pair(KeyId=k, KeyPairSpec="ECC_NIST_P256", Recipient=recipient(DOC_A))
    assert "PrivateKeyPlaintext" not in p and p["PrivateKeyCiphertextBlob"]
    priv = serialization.load_der_private_key(openssl_open(p["CiphertextForRecipient"]), password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert priv.public_key().public_bytes(*fmt) == p["PublicKey"]
    g = app.generate_random(NumberOfBytes=48, Recipient=recipient(DOC_A))
    assert "Plaintext" not in g and len(openssl_open(g["CiphertextForRecipient"])) == 48


@check
def recipient_bad_inputs():
    k = new_key(Policy=enclave_policy())["KeyId"]
    blob = admin.encrypt(KeyId=k, Plaintext=b"s")["CiphertextBlob"]
    expect_error("ValidationException", app.decrypt, CiphertextBlob=blob, Recipient=recipient(b"not a document"))
    tampered = bytearray(DOC_A)
    tampered[len(tampered) // 2] ^= 1
    expect_error("ValidationException", app.decrypt, CiphertextBlob=blob, Recipient=recipient(bytes(tampered)))
    try:
        app.decrypt(CiphertextBlob=blob, Recipient={"KeyEncryptionAlgorithm": "RSA_OAEP_SHA_1", "AttestationDocument": DOC_A})
        raise AssertionError("accepted another algorithm")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "ValidationException"
    except Exception as e:  # botocore may refuse the enum client-side
        assert "KeyEncryptionAlgorithm" in str(e) or "valid" in str(e), e


# ---------------------------------------------------------------- protocol errors (raw requests)


def raw(body, target="TrentService.ListKeys", akid=None, secret=None, when=None, content_type="application/x-amz-json-1.1"):
    creds = botocore.credentials.Credentials(akid or os.environ["ADMIN_AKID"], secret or os.environ["ADMIN_SECRET"])
    req = botocore.awsrequest.AWSRequest(method="POST", url=ENDPOINT + "/", data=body,
                                         headers={"Content-Type": content_type, "X-Amz-Target": target})
    if when is None:
        botocore.auth.SigV4Auth(creds, "kms", REGION).add_auth(req)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            botocore.auth.SigV4Auth(creds, "kms", REGION).add_auth(req)
    prepared = req.prepare()
    r = urllib.request.Request(prepared.url, data=body, method="POST", headers=dict(prepared.headers))
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def raw_expect(status, typ, *args, **kw):
    s, body = raw(*args, **kw)
    assert (s, body.get("__type")) == (status, typ), (s, body)
    assert isinstance(body.get("message"), str), body


@check
def protocol_errors():
    raw_expect(400, "SerializationException", b"{not json")
    raw_expect(400, "SerializationException", b'{"KeyId": 5}', target="TrentService.DescribeKey")
    raw_expect(400, "SerializationException", b'{"Limit": "ten"}')
    raw_expect(400, "UnknownOperationException", b"{}", target="TrentService.MakeCoffee")
    raw_expect(400, "ValidationException", b"{}", target="TrentService.DescribeKey")
    raw_expect(400, "SerializationException", b'{"KeyId": "alias/x", "Plaintext": "***not base64***"}', target="TrentService.Encrypt")
    raw_expect(400, "SerializationException", b'{"CiphertextBlob": "%%%"}', target="TrentService.Decrypt")
    raw_expect(413, "RequestEntityTooLargeException", b'{"Pad": "' + b"a" * (600 * 1024) + b'"}')
    raw_expect(400, "UnrecognizedClientException", b"{}", akid="AKIANOTAKNOWNKEY0001")
    raw_expect(400, "InvalidSignatureException", b"{}", secret="wrong-secret-wrong-secret")
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
    raw_expect(400, "InvalidSignatureException", b"{}", when=old.replace(tzinfo=None))
    # Unsigned request.
    r = urllib.request.Request(ENDPOINT + "/", data=b"{}", method="POST",
                               headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    try:
        urllib.request.urlopen(r, timeout=30)
        raise AssertionError("unsigned request accepted")
    except urllib.error.HTTPError as e:
        assert json.loads(e.read())["__type"] == "MissingAuthenticationTokenException"
    # And a well-formed raw request works.
    s, body = raw(b"{}")
    assert s == 200 and "Keys" in body, body


failed = [n for n, e in RESULTS if e is not None]
print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
