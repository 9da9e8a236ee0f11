//! Grants, several principals (users, a role session with a session token), multi-Region keys,
//! imported key material and ListKeyRotations, driven by boto3 and the AWS CLI
//! (tests/python/test_kms_grants.py) against a server on a loopback port that answers for two
//! Regions.

mod common;

use std::process::Command;

/// Credentials of the configured principals: (access key id, secret, principal in the config).
const APP: (&str, &str) = ("AKIAAPPUSEREXAMPLE1", "app-secret-app-secret");
const OTHER: (&str, &str) = ("AKIAOTHERUSEREXAMPL", "other-secret-other-secret");
const SESSION: (&str, &str) = ("ASIASESSIONEXAMPLE1", "session-secret-session-secret");
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLE-session-token-0001";

#[test]
fn boto3_drives_grants_regions_import_and_principals() {
    if !common::have_boto3() {
        // The CI image installs boto3 (scripts/install-deps.sh); say so loudly if it is absent.
        panic!("python3 with boto3 is required for this test");
    }
    let tmp = tempfile::tempdir().unwrap();
    let yaml = format!(
        "region: us-east-1\nother_regions: [eu-west-1]\naccount_id: '111122223333'\ncredentials:\n\
         - access_key_id: {}\n  secret_access_key: {}\n  principal: app\n\
         - access_key_id: {}\n  secret_access_key: {}\n  principal: user/other\n\
         - access_key_id: {}\n  secret_access_key: {}\n  principal: assumed-role/app-role/session-1\n  session_token: {SESSION_TOKEN}\n",
        APP.0, APP.1, OTHER.0, OTHER.1, SESSION.0, SESSION.1
    );
    let cfg: cloister_kms::Config = serde_yaml_ng::from_str(&yaml).expect("config");
    cfg.validate().expect("valid config");
    let data = tmp.path().join("data");
    let server = common::TestServer::start(&data, cfg, 2);
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("admin-credentials.json")).unwrap())
            .unwrap();

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/test_kms_grants.py"
    );
    let status = Command::new("python3")
        .arg(script)
        .env("KMS_ENDPOINT", server.endpoint())
        .env("ADMIN_AKID", creds["AccessKeyId"].as_str().unwrap())
        .env("ADMIN_SECRET", creds["SecretAccessKey"].as_str().unwrap())
        .env("APP_AKID", APP.0)
        .env("APP_SECRET", APP.1)
        .env("OTHER_AKID", OTHER.0)
        .env("OTHER_SECRET", OTHER.1)
        .env("SESSION_AKID", SESSION.0)
        .env("SESSION_SECRET", SESSION.1)
        .env("SESSION_TOKEN", SESSION_TOKEN)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .status()
        .expect("run python3");
    assert!(status.success(), "boto3 grants script failed");
}
