"""Drives grants, principals, multi-Region keys, imported key material and ListKeyRotations of
Cloister's key service with boto3 and the AWS CLI (independent, real AWS clients).

Run by crates/kms/tests/grants_boto3.rs, which starts a server answering for us-east-1 and
eu-west-1 and passes, in the environment: KMS_ENDPOINT, ADMIN_AKID/ADMIN_SECRET (the account
principal), APP_AKID/APP_SECRET (user/app), OTHER_AKID/OTHER_SECRET (user/other),
SESSION_AKID/SESSION_SECRET/SESSION_TOKEN (a session of role app-role).

Each check raises on failure; the script prints one line per check and a summary.
"""

import base64
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

ENDPOINT = os.environ["KMS_ENDPOINT"]
ACCOUNT = "111122223333"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
APP = f"arn:aws:iam::{ACCOUNT}:user/app"
OTHER = f"arn:aws:iam::{ACCOUNT}:user/other"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/app-role"


def client(akid, secret, token=None, region="us-east-1"):
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, region_name=region),
    )


admin = client(os.environ["ADMIN_AKID"], os.environ["ADMIN_SECRET"])
admin_eu = client(os.environ["ADMIN_AKID"], os.environ["ADMIN_SECRET"], region="eu-west-1")
app = client(os.environ["APP_AKID"], os.environ["APP_SECRET"])
other = client(os.environ["OTHER_AKID"], os.environ["OTHER_SECRET"])
session = client(
    os.environ["SESSION_AKID"], os.environ["SESSION_SECRET"], token=os.environ["SESSION_TOKEN"]
)
app_eu = client(os.environ["APP_AKID"], os.environ["APP_SECRET"], region="eu-west-1")
other_eu = client(os.environ["OTHER_AKID"], os.environ["OTHER_SECRET"], region="eu-west-1")
session_eu = client(
    os.environ["SESSION_AKID"],
    os.environ["SESSION_SECRET"],
    token=os.environ["SESSION_TOKEN"],
    region="eu-west-1",
)
session_bad_token = client(
    os.environ["SESSION_AKID"], os.environ["SESSION_SECRET"], token="not-the-session-token"
)

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


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e.response['Error'].get('Message')}"
        return e
    raise AssertionError(f"expected {code}, call succeeded")


def policy(*statements):
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


# The account principal stands for every principal of the account, so the statement naming it
# grants only administration; cryptographic use comes from the other statements or grants.
ADMIN_ACTIONS = [
    "kms:Describe*",
    "kms:Get*",
    "kms:List*",
    "kms:PutKeyPolicy",
    "kms:CreateGrant",
    "kms:RevokeGrant",
    "kms:ScheduleKeyDeletion",
]
ADMIN_STATEMENT = {
    "Sid": "admin",
    "Effect": "Allow",
    "Principal": {"AWS": ROOT},
    "Action": ADMIN_ACTIONS,
    "Resource": "*",
}


def new_key(statements=None, **kwargs):
    if statements is not None:
        kwargs["Policy"] = policy(*statements)
    return admin.create_key(**kwargs)["KeyMetadata"]["KeyId"]


@check
def policy_allows_one_principal_and_denies_another():
    key = new_key(
        [
            ADMIN_STATEMENT,
            {"Effect": "Allow", "Principal": {"AWS": [APP, ROLE]}, "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"},
            # This server speaks plain HTTP: aws:SecureTransport is false.
            {"Effect": "Deny", "Principal": {"AWS": APP}, "Action": "kms:GetKeyPolicy", "Resource": "*",
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
            # aws:SourceIp is the client's address (loopback here).
            {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:GenerateDataKey", "Resource": "*",
             "Condition": {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}},
            {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:GenerateDataKeyWithoutPlaintext",
             "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
            {"Effect": "Deny", "Principal": {"AWS": OTHER}, "Action": "kms:*", "Resource": "*",
             "Condition": {"StringNotEquals": {"kms:RequestAlias": "alias/never"}}},
        ]
    )
    ct = app.encrypt(KeyId=key, Plaintext=b"for app")["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=ct)["Plaintext"] == b"for app"
    expect_error("AccessDeniedException", other.decrypt, CiphertextBlob=ct)
    expect_error("AccessDeniedException", other.encrypt, KeyId=key, Plaintext=b"x")
    # The explicit Deny beats the account statement too.
    expect_error("AccessDeniedException", other.describe_key, KeyId=key)
    assert app.describe_key(KeyId=key)["KeyMetadata"]["KeyId"] == key
    expect_error("AccessDeniedException", app.get_key_policy, KeyId=key, PolicyName="default")
    assert "Statement" in admin.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    app.generate_data_key(KeyId=key, KeySpec="AES_256")
    expect_error("AccessDeniedException", app.generate_data_key_without_plaintext, KeyId=key, KeySpec="AES_256")
    # A session of the role is covered by the role principal.
    assert session.decrypt(CiphertextBlob=ct)["Plaintext"] == b"for app"


@check
def session_credentials_need_their_token():
    expect_error("UnrecognizedClientException", session_bad_token.list_keys)
    assert "Keys" in session.list_keys()


@check
def grant_used_by_a_second_principal_then_revoked():
    key = new_key([ADMIN_STATEMENT])
    expect_error("AccessDeniedException", app.encrypt, KeyId=key, Plaintext=b"x")
    # DryRun: would succeed, creates nothing.
    expect_error(
        "DryRunOperationException",
        admin.create_grant,
        KeyId=key,
        GranteePrincipal=APP,
        Operations=["Encrypt", "Decrypt"],
        DryRun=True,
    )
    assert admin.list_grants(KeyId=key)["Grants"] == []
    g = admin.create_grant(
        KeyId=key, GranteePrincipal=APP, Operations=["Encrypt", "Decrypt"], Name="app-use"
    )
    # The grant token is honoured at once.
    ct = app.encrypt(KeyId=key, Plaintext=b"granted", GrantTokens=[g["GrantToken"]])["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=ct, GrantTokens=[g["GrantToken"]])["Plaintext"] == b"granted"
    expect_error("AccessDeniedException", other.decrypt, CiphertextBlob=ct)
    expect_error("InvalidGrantTokenException", app.decrypt, CiphertextBlob=ct, GrantTokens=["forged"])
    # Name idempotency.
    again = admin.create_grant(
        KeyId=key, GranteePrincipal=APP, Operations=["Encrypt", "Decrypt"], Name="app-use"
    )
    assert again["GrantId"] == g["GrantId"]
    grants = admin.list_grants(KeyId=key)["Grants"]
    assert [x["GrantId"] for x in grants] == [g["GrantId"]], grants
    assert grants[0]["GranteePrincipal"] == APP and grants[0]["Name"] == "app-use"
    expect_error(
        "DryRunOperationException", admin.revoke_grant, KeyId=key, GrantId=g["GrantId"], DryRun=True
    )
    admin.revoke_grant(KeyId=key, GrantId=g["GrantId"])
    expect_error("AccessDeniedException", app.decrypt, CiphertextBlob=ct)
    assert admin.list_grants(KeyId=key)["Grants"] == []


@check
def grant_constraints_and_retirement():
    key = new_key([ADMIN_STATEMENT])
    g = admin.create_grant(
        KeyId=key,
        GranteePrincipal=OTHER,
        RetiringPrincipal=APP,
        Operations=["Encrypt", "Decrypt"],
        Constraints={"EncryptionContextEquals": {"tenant": "t1"}},
    )
    ct = other.encrypt(KeyId=key, Plaintext=b"c", EncryptionContext={"tenant": "t1"})["CiphertextBlob"]
    expect_error("AccessDeniedException", other.encrypt, KeyId=key, Plaintext=b"c")
    expect_error(
        "AccessDeniedException",
        other.encrypt,
        KeyId=key,
        Plaintext=b"c",
        EncryptionContext={"tenant": "t1", "extra": "1"},
    )
    sub = admin.create_grant(
        KeyId=key,
        GranteePrincipal=APP,
        Operations=["Encrypt"],
        Constraints={"EncryptionContextSubset": {"app": "a"}},
    )
    app.encrypt(KeyId=key, Plaintext=b"c", EncryptionContext={"app": "a", "more": "ok"})
    expect_error("AccessDeniedException", app.encrypt, KeyId=key, Plaintext=b"c", EncryptionContext={"app": "b"})
    retirable = app.list_retirable_grants(RetiringPrincipal=APP)["Grants"]
    assert g["GrantId"] in [x["GrantId"] for x in retirable]
    expect_error("AccessDeniedException", other.retire_grant, GrantToken=g["GrantToken"])
    expect_error("DryRunOperationException", app.retire_grant, GrantToken=g["GrantToken"], DryRun=True)
    assert other.decrypt(CiphertextBlob=ct, EncryptionContext={"tenant": "t1"})["Plaintext"] == b"c"
    app.retire_grant(GrantToken=g["GrantToken"])
    expect_error("AccessDeniedException", other.decrypt, CiphertextBlob=ct, EncryptionContext={"tenant": "t1"})
    admin.retire_grant(KeyId=key, GrantId=sub["GrantId"])
    assert admin.list_grants(KeyId=key)["Grants"] == []


@check
def multi_region_replicate_and_decrypt_in_the_replica_region():
    key = admin.create_key(MultiRegion=True, Description="mrk")["KeyMetadata"]
    assert key["KeyId"].startswith("mrk-") and key["MultiRegion"] is True
    assert key["MultiRegionConfiguration"]["MultiRegionKeyType"] == "PRIMARY"
    kid = key["KeyId"]
    expect_error("NotFoundException", admin_eu.describe_key, KeyId=kid)
    r = admin.replicate_key(KeyId=kid, ReplicaRegion="eu-west-1")
    assert r["ReplicaKeyMetadata"]["Arn"] == f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{kid}"
    ct = admin.encrypt(KeyId=kid, Plaintext=b"everywhere", EncryptionContext={"r": "1"})["CiphertextBlob"]
    d = admin_eu.decrypt(CiphertextBlob=ct, EncryptionContext={"r": "1"})
    assert d["Plaintext"] == b"everywhere"
    assert d["KeyId"] == f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{kid}"
    m = admin_eu.describe_key(KeyId=kid)["KeyMetadata"]["MultiRegionConfiguration"]
    assert m["MultiRegionKeyType"] == "REPLICA" and m["PrimaryKey"]["Region"] == "us-east-1"
    expect_error("AlreadyExistsException", admin.replicate_key, KeyId=kid, ReplicaRegion="eu-west-1")
    admin.update_primary_region(KeyId=kid, PrimaryRegion="eu-west-1")
    m = admin.describe_key(KeyId=kid)["KeyMetadata"]["MultiRegionConfiguration"]
    assert m["MultiRegionKeyType"] == "REPLICA" and m["PrimaryKey"]["Region"] == "eu-west-1"
    # A single-Region key does not exist in the other Region.
    single = admin.create_key()["KeyMetadata"]["KeyId"]
    expect_error("NotFoundException", admin_eu.describe_key, KeyId=single)


MRK_ADMIN_STATEMENT = {
    **ADMIN_STATEMENT,
    "Sid": "mrk-admin",
    "Action": ADMIN_ACTIONS
    + [
        "kms:ReplicateKey",
        "kms:EnableKey",
        "kms:DisableKey",
        "kms:TagResource",
        "kms:UpdateKeyDescription",
        "kms:CancelKeyDeletion",
        "kms:CreateAlias",
        "kms:DeleteAlias",
    ],
}


@check
def multi_region_replica_has_its_own_policy_description_tags_state_and_grants():
    primary_policy = policy(
        MRK_ADMIN_STATEMENT,
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"},
    )
    # The replica's own policy denies app, which the primary's allows, and lets the role decrypt.
    replica_policy = policy(
        MRK_ADMIN_STATEMENT,
        {"Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "kms:Decrypt", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": APP}, "Action": "kms:*", "Resource": "*"},
    )
    kid = admin.create_key(
        MultiRegion=True, Description="primary", Policy=primary_policy, Tags=[{"TagKey": "site", "TagValue": "us"}]
    )["KeyMetadata"]["KeyId"]
    r = admin.replicate_key(
        KeyId=kid,
        ReplicaRegion="eu-west-1",
        Policy=replica_policy,
        Description="replica",
        Tags=[{"TagKey": "site", "TagValue": "eu"}],
    )
    assert json.loads(r["ReplicaPolicy"]) == json.loads(replica_policy)
    assert r["ReplicaTags"] == [{"TagKey": "site", "TagValue": "eu"}]
    assert r["ReplicaKeyMetadata"]["Description"] == "replica"
    assert r["ReplicaKeyMetadata"]["KeyState"] == "Enabled"
    assert admin.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "primary"
    assert admin_eu.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "replica"
    got = admin_eu.get_key_policy(KeyId=kid, PolicyName="default")["Policy"]
    assert json.loads(got) == json.loads(replica_policy)
    got = admin.get_key_policy(KeyId=kid, PolicyName="default")["Policy"]
    assert json.loads(got) == json.loads(primary_policy)
    assert admin_eu.list_resource_tags(KeyId=kid)["Tags"] == [{"TagKey": "site", "TagValue": "eu"}]
    assert admin.list_resource_tags(KeyId=kid)["Tags"] == [{"TagKey": "site", "TagValue": "us"}]
    admin_eu.update_key_description(KeyId=kid, Description="replica, renamed")
    assert admin.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "primary"

    # The material is shared: a ciphertext of the primary decrypts in the replica's Region,
    # for the principals the replica's policy allows.
    ctx = {"r": "2"}
    ct = app.encrypt(KeyId=kid, Plaintext=b"mrk", EncryptionContext=ctx)["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)["Plaintext"] == b"mrk"
    expect_error("AccessDeniedException", app_eu.decrypt, CiphertextBlob=ct, EncryptionContext=ctx)
    d = session_eu.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)
    assert d["Plaintext"] == b"mrk" and d["KeyId"] == f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{kid}"

    # A grant on the primary does not apply in the replica's Region.
    g = admin.create_grant(KeyId=kid, GranteePrincipal=OTHER, Operations=["Decrypt"])
    got = other.decrypt(CiphertextBlob=ct, EncryptionContext=ctx, GrantTokens=[g["GrantToken"]])
    assert got["Plaintext"] == b"mrk"
    expect_error("AccessDeniedException", other_eu.decrypt, CiphertextBlob=ct, EncryptionContext=ctx)
    assert [x["GrantId"] for x in admin.list_grants(KeyId=kid)["Grants"]] == [g["GrantId"]]
    assert admin_eu.list_grants(KeyId=kid)["Grants"] == []

    # The replica is disabled while the primary keeps working.
    admin_eu.disable_key(KeyId=kid)
    assert admin_eu.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"
    expect_error("DisabledException", session_eu.decrypt, CiphertextBlob=ct, EncryptionContext=ctx)
    assert admin.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Enabled"
    assert app.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)["Plaintext"] == b"mrk"
    admin_eu.enable_key(KeyId=kid)
    assert session_eu.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)["Plaintext"] == b"mrk"

    # Aliases are per Region: the same name names the key in each Region separately.
    admin.create_alias(AliasName="alias/mrk-site", TargetKeyId=kid)
    expect_error("NotFoundException", admin_eu.describe_key, KeyId="alias/mrk-site")
    admin_eu.create_alias(AliasName="alias/mrk-site", TargetKeyId=kid)
    expect_error("AlreadyExistsException", admin_eu.create_alias, AliasName="alias/mrk-site", TargetKeyId=kid)
    assert admin_eu.describe_key(KeyId="alias/mrk-site")["KeyMetadata"]["Description"] == "replica, renamed"
    eu_aliases = admin_eu.list_aliases(KeyId=kid)["Aliases"]
    assert [a["AliasArn"] for a in eu_aliases] == [f"arn:aws:kms:eu-west-1:{ACCOUNT}:alias/mrk-site"], eu_aliases
    admin_eu.delete_alias(AliasName="alias/mrk-site")
    assert admin.describe_key(KeyId="alias/mrk-site")["KeyMetadata"]["Description"] == "primary"

    # The primary's deletion waits for its replica; the replica's deletion is its own.
    s = admin.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    assert s["KeyState"] == "PendingReplicaDeletion" and "DeletionDate" not in s, s
    m = admin.describe_key(KeyId=kid)["KeyMetadata"]
    assert m["KeyState"] == "PendingReplicaDeletion" and m["PendingDeletionWindowInDays"] == 7, m
    expect_error("KMSInvalidStateException", app.decrypt, CiphertextBlob=ct, EncryptionContext=ctx)
    assert session_eu.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)["Plaintext"] == b"mrk"
    admin.cancel_key_deletion(KeyId=kid)
    assert admin.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"
    s = admin_eu.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    assert s["KeyState"] == "PendingDeletion" and "DeletionDate" in s, s
    assert admin.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"


def wrap(params, material, algorithm):
    public = serialization.load_der_public_key(params["PublicKey"])
    sha = hashes.SHA256() if algorithm.endswith("SHA_256") else hashes.SHA1()
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=sha), algorithm=sha, label=None)
    if algorithm.startswith("RSAES_OAEP"):
        return public.encrypt(material, oaep)
    aes = os.urandom(32)
    return public.encrypt(aes, oaep) + aes_key_wrap_with_padding(aes, material)


def import_material(key, material, algorithm="RSAES_OAEP_SHA_256", kms=None, **kwargs):
    kms = kms or admin
    params = kms.get_parameters_for_import(
        KeyId=key, WrappingAlgorithm=algorithm, WrappingKeySpec="RSA_2048"
    )
    valid = params["ParametersValidTo"].timestamp() - time.time()
    assert 86_000 < valid <= 86_400 + 5, valid
    kms.import_key_material(
        KeyId=key,
        ImportToken=params["ImportToken"],
        EncryptedKeyMaterial=wrap(params, material, algorithm),
        **kwargs,
    )


def refuses_other_material(kms, key, wrapping_key_spec):
    """Fresh random material, wrapped for fresh parameters of `kms`'s Region, is refused."""
    params = kms.get_parameters_for_import(
        KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec=wrapping_key_spec
    )
    expect_error(
        "IncorrectKeyMaterialException",
        kms.import_key_material,
        KeyId=key,
        ImportToken=params["ImportToken"],
        EncryptedKeyMaterial=wrap(params, os.urandom(32), "RSAES_OAEP_SHA_256"),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )


@check
def imported_key_material_encrypts_expires_and_is_deleted():
    meta = admin.create_key(Origin="EXTERNAL")["KeyMetadata"]
    key = meta["KeyId"]
    assert meta["KeyState"] == "PendingImport" and meta["Origin"] == "EXTERNAL"
    expect_error("KMSInvalidStateException", admin.encrypt, KeyId=key, Plaintext=b"x")
    material = os.urandom(32)
    # ValidTo in the past is refused.
    params = admin.get_parameters_for_import(
        KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30)
    expect_error(
        "ValidationException",
        admin.import_key_material,
        KeyId=key,
        ImportToken=params["ImportToken"],
        EncryptedKeyMaterial=wrap(params, material, "RSAES_OAEP_SHA_256"),
        ExpirationModel="KEY_MATERIAL_EXPIRES",
        ValidTo=past,
    )
    # Material valid for three more seconds.
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)
    admin.import_key_material(
        KeyId=key,
        ImportToken=params["ImportToken"],
        EncryptedKeyMaterial=wrap(params, material, "RSAES_OAEP_SHA_256"),
        ExpirationModel="KEY_MATERIAL_EXPIRES",
        ValidTo=soon,
    )
    meta = admin.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "Enabled" and meta["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    ct = admin.encrypt(KeyId=key, Plaintext=b"imported")["CiphertextBlob"]
    assert admin.decrypt(CiphertextBlob=ct)["Plaintext"] == b"imported"
    time.sleep(3.5)
    expect_error("KMSInvalidStateException", admin.decrypt, CiphertextBlob=ct)
    assert admin.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingImport"
    # Other material is refused; the same material (wrapped the other way) brings it back.
    refuses_other_material(admin, key, "RSA_2048")
    import_material(
        key, material, "RSA_AES_KEY_WRAP_SHA_256", ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE"
    )
    assert admin.decrypt(CiphertextBlob=ct)["Plaintext"] == b"imported"
    admin.delete_imported_key_material(KeyId=key)
    assert admin.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingImport"
    expect_error("KMSInvalidStateException", admin.decrypt, CiphertextBlob=ct)
    other_key = admin.create_key()["KeyMetadata"]["KeyId"]
    expect_error("UnsupportedOperationException", admin.delete_imported_key_material, KeyId=other_key)


@check
def imported_multi_region_key_takes_its_material_in_each_region():
    kid = admin.create_key(Origin="EXTERNAL", MultiRegion=True)["KeyMetadata"]["KeyId"]
    material = os.urandom(32)
    import_material(kid, material, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    ct = admin.encrypt(KeyId=kid, Plaintext=b"imported mrk")["CiphertextBlob"]
    replica = admin.replicate_key(KeyId=kid, ReplicaRegion="eu-west-1")["ReplicaKeyMetadata"]
    assert replica["KeyState"] == "PendingImport" and replica["Origin"] == "EXTERNAL", replica
    expect_error("KMSInvalidStateException", admin_eu.decrypt, CiphertextBlob=ct)
    # Other material is refused in the replica's Region; the same material (wrapped by
    # `cryptography` for that Region's own parameters) enables it.
    refuses_other_material(admin_eu, kid, "RSA_3072")
    import_material(
        kid, material, "RSA_AES_KEY_WRAP_SHA_256", kms=admin_eu, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE"
    )
    assert admin_eu.decrypt(CiphertextBlob=ct)["Plaintext"] == b"imported mrk"
    # Deleting the primary Region's material leaves the replica's.
    admin.delete_imported_key_material(KeyId=kid)
    assert admin.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "PendingImport"
    expect_error("KMSInvalidStateException", admin.decrypt, CiphertextBlob=ct)
    assert admin_eu.decrypt(CiphertextBlob=ct)["Plaintext"] == b"imported mrk"


@check
def imported_hmac_material_matches_python_hmac():
    import hashlib
    import hmac as py_hmac

    for spec, alg, digest, length in (
        ("HMAC_256", "HMAC_SHA_256", hashlib.sha256, 48),
        ("HMAC_512", "HMAC_SHA_512", hashlib.sha512, 64),
    ):
        meta = admin.create_key(KeySpec=spec, KeyUsage="GENERATE_VERIFY_MAC", Origin="EXTERNAL")[
            "KeyMetadata"
        ]
        key = meta["KeyId"]
        assert meta["KeyState"] == "PendingImport" and meta["Origin"] == "EXTERNAL", meta
        assert meta["KeySpec"] == spec and meta["MacAlgorithms"] == [alg], meta
        expect_error(
            "KMSInvalidStateException", admin.generate_mac, KeyId=key, Message=b"m", MacAlgorithm=alg
        )
        # Material outside the spec's lengths is refused; known material (wrapped by
        # `cryptography` with RSAES_OAEP_SHA_256) is taken.
        params = admin.get_parameters_for_import(
            KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
        )
        expect_error(
            "IncorrectKeyMaterialException",
            admin.import_key_material,
            KeyId=key,
            ImportToken=params["ImportToken"],
            EncryptedKeyMaterial=wrap(params, b"k" * 16, "RSAES_OAEP_SHA_256"),
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
        material = bytes(range(length))
        import_material(key, material, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        assert admin.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
        message = b"a message authenticated with imported HMAC material"
        mac = admin.generate_mac(KeyId=key, Message=message, MacAlgorithm=alg)["Mac"]
        assert mac == py_hmac.new(material, message, digest).digest(), spec
        assert admin.verify_mac(KeyId=key, Message=message, MacAlgorithm=alg, Mac=mac)["MacValid"]
        admin.delete_imported_key_material(KeyId=key)
        expect_error(
            "KMSInvalidStateException", admin.generate_mac, KeyId=key, Message=message, MacAlgorithm=alg
        )
    # Only symmetric encryption and HMAC keys take imported material here.
    expect_error(
        "UnsupportedOperationException",
        admin.create_key,
        KeySpec="ECC_NIST_P256",
        KeyUsage="SIGN_VERIFY",
        Origin="EXTERNAL",
    )


@check
def list_key_rotations_after_rotate_on_demand():
    key = admin.create_key()["KeyMetadata"]["KeyId"]
    assert admin.list_key_rotations(KeyId=key)["Rotations"] == []
    admin.rotate_key_on_demand(KeyId=key)
    rot = admin.list_key_rotations(KeyId=key)["Rotations"]
    assert len(rot) == 1 and rot[0]["RotationType"] == "ON_DEMAND", rot
    assert rot[0]["KeyId"].endswith(key)


def aws_cli(*args):
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=os.environ["ADMIN_AKID"],
        AWS_SECRET_ACCESS_KEY=os.environ["ADMIN_SECRET"],
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    env.pop("AWS_SESSION_TOKEN", None)
    out = subprocess.run(
        ["aws", "kms", *args, "--endpoint-url", ENDPOINT, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else {}


@check
def aws_cli_grants_and_rotations():
    if shutil.which("aws") is None:
        raise AssertionError("the AWS CLI is required (scripts/install-deps.sh installs it)")
    key = admin.create_key()["KeyMetadata"]["KeyId"]
    g = aws_cli(
        "create-grant", "--key-id", key, "--grantee-principal", APP, "--operations", "Decrypt", "Encrypt"
    )
    listed = aws_cli("list-grants", "--key-id", key)["Grants"]
    assert [x["GrantId"] for x in listed] == [g["GrantId"]]
    aws_cli("rotate-key-on-demand", "--key-id", key)
    rot = aws_cli("list-key-rotations", "--key-id", key)["Rotations"]
    assert rot[0]["RotationType"] == "ON_DEMAND"
    aws_cli("revoke-grant", "--key-id", key, "--grant-id", g["GrantId"])


failed = [n for n, e in RESULTS if e is not None]
print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
sys.exit(1 if failed else 0)
