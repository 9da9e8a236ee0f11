//! Cloister as a drop-in for nitro-cli: the binary run under the names `nitro-cli` and
//! `vsock-proxy` (symlinks in a temporary directory), checked for nitro-cli's argument rules
//! (the cases of nitro-cli's own parser tests), its error contract (`[ Exx ]`, the help link,
//! the error log, the code's number as exit status), its JSON key order, and a script written
//! for nitro-cli: build, run two copies, describe, console with a timeout, terminate, proxy.

mod enclave_support;

use clap::Parser;
use enclave_support::{static_bins, Env};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory holding `nitro-cli` and `vsock-proxy` links to the cloister binary.
fn links(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["nitro-cli", "vsock-proxy"] {
        let link = bin.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cloister"), &link).unwrap();
        }
    }
    bin
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// nitro-cli's parser cases (its `tests/test_nitro_cli_args.rs`): arguments and whether they
/// parse. Cloister's full command tree must agree on each.
#[test]
fn parser_agrees_with_nitro_cli_cases() {
    const URI: &str = "dkr.ecr.us-east-1.amazonaws.com/stronghold-develss";
    const ARN: &str = "arn:aws:kms:us-west-2:111122223333:key/12345678-abcd-bcde-9876-ab0987654321";
    const RUN: &[&str] = &[
        "run-enclave",
        "--cpu-ids",
        "10000",
        "10001",
        "--memory",
        "512",
    ];
    // One row per case: the arguments after `nitro-cli`, split on spaces (`{URI}`, `{ARN}`
    // and `{RUN}` stand for the values above), and whether nitro-cli accepts them.
    #[rustfmt::skip]
    let cases: &[(&str, bool)] = &[
        ("terminate-enclave", false),
        ("terminate-enclave --enclave-id", false),
        ("terminate-enclave --enclave-id i-1234_enc123", true),
        ("terminate-enclave --enclave-id 1234 135", false),
        ("terminate-enclave --enclave-name testName", true),
        ("terminate-enclave --enclave-name", false),
        ("terminate-enclave --enclave-name a b", false),
        ("describe-enclaves", true),
        ("describe-enclaves --metadata", true),
        ("describe-eif --eif-path dir/image.eif", true),
        ("describe-eif --eif-path", false),
        ("console", false),
        ("console --enclave-id", false),
        ("console --enclave-id i-1234_enc123", true),
        ("console --enclave-id i-1234_enc123 135", false),
        ("console --enclave-name testName", true),
        ("console --enclave-name", false),
        ("console --enclave-name name1 name2", false),
        ("console --enclave-id i-1 --disconnect-timeout 10", true),
        ("console --enclave-name t --disconnect-timeout 10", true),
        ("console --enclave-id i-1 --disconnect-timeout", false),
        ("build-enclave --docker-uri {URI} --output-file image.eif", true),
        ("build-enclave --docker-uri {URI}", false),
        ("build-enclave --docker-uri {URI} --docker-dir dir/ --output-file image.eif", true),
        ("build-enclave --docker-uri {URI} --docker-dir dir/ --output-file image.eif --signing-certificate cert.pem --private-key key.pem", true),
        ("build-enclave --docker-uri {URI} --docker-dir dir/ --output-file image.eif --signing-certificate cert.pem --private-key {ARN}", true),
        ("build-enclave --docker-uri {URI} --docker-dir dir/ --output-file image.eif --private-key key.pem", false),
        ("sign-eif --eif-path image.eif --signing-certificate cert.pem --private-key key.pem", true),
        ("sign-eif --eif-path image.eif --private-key key.pem", false),
        ("sign-eif --eif-path image.eif --signing-certificate cert.pem", false),
        ("build-enclave --docker-uri {URI} --docker-dir dir/ --output-file image.eif --name TestName --version 4.0 --metadata meta.json", true),
        ("build-enclave --docker-uri {URI} --docker-dir dir/ --output-file image.eif --name TestName --version 4.0 --metadata", false),
        ("{RUN} --eif-path dir/image.eif --enclave-cid 1234 --debug-mode", true),
        ("run-enclave --memory 512 --eif-path dir/image.eif --enclave-cid 12345 --debug-mode", false),
        ("run-enclave --cpu-ids --memory 512 --eif-path dir/image.eif", false),
        ("run-enclave --cpu-ids 10000 --eif-path dir/image.eif --enclave-cid 12345 --debug-mode", false),
        ("run-enclave --cpu-ids 10000 --memory --eif-path dir/image.eif", false),
        ("{RUN} --eif-path dir/image.eif --enclave-cid", false),
        ("{RUN} --eif-path d.eif --enclave-cid 1 --debug-mode 123", false),
        ("{RUN}", false),
        ("{RUN} --eif-path", false),
        ("run-enclave --config", false),
        ("run-enclave --config c1.json c2.json", false),
        ("run-enclave --config config.json --cpu-count 2 --memory 1024 --eif-path dir/image.eif", false),
        ("{RUN} --eif-path d.eif --debug-mode --enclave-name testName", true),
        ("{RUN} --eif-path d.eif --enclave-name", false),
        ("pcr --input", false),
        ("pcr --signing-certificate", false),
        ("pcr --signing-certificate cert.pem --input test.bin", false),
        ("pcr --signing-certificate cert.pem", true),
        // Beyond nitro-cli's own cases: memory suffixes and the explain verb.
        ("run-enclave --cpu-ids 10000 10001 --memory 4G --eif-path d.eif", true),
        ("explain --error-code E26", true),
    ];
    let mut wrong = Vec::new();
    for &(row, ok) in cases {
        let args: Vec<&str> = row
            .split(' ')
            .flat_map(|w| match w {
                "{URI}" => vec![URI],
                "{ARN}" => vec![ARN],
                "{RUN}" => RUN.to_vec(),
                w => vec![w],
            })
            .collect();
        let argv = std::iter::once("nitro-cli").chain(args.iter().copied());
        let parsed = cloister::Cli::try_parse_from(argv);
        if parsed.is_ok() != ok {
            wrong.push(format!(
                "{args:?}: expected {}",
                if ok { "ok" } else { "error" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "parser disagrees with nitro-cli:\n{}",
        wrong.join("\n")
    );
}

/// The error contract under the name `nitro-cli`, and Cloister's own under `cloister`.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share what it started"
)]
fn errors_follow_nitro_cli_contract_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let bin = links(dir.path());
    let logs = dir.path().join("logs");
    let nitro = |args: &[&str]| {
        Command::new(bin.join("nitro-cli"))
            .args(args)
            .env("NITRO_CLI_LOGS_PATH", &logs)
            .env("CLOISTER_RUN_DIR", dir.path().join("run"))
            .env_remove("CLOISTER_ERROR_STYLE")
            .env_remove("BACKTRACE")
            .output()
            .unwrap()
    };

    // An unreadable image: E35, exit status 35.
    let missing = dir.path().join("missing.eif");
    let o = nitro(&["describe-eif", "--eif-path", missing.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(35), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines[0], "[ E35 ] EIF file parsing error.", "{err}");
    assert!(lines[1].starts_with("[E1"), "{err}");
    assert!(err.contains(
        "\n\nFor more details, please visit https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#E35"
    ));
    let log_line = lines
        .iter()
        .find(|l| l.starts_with("If you open a support ticket"))
        .unwrap_or_else(|| panic!("no log path: {err}"));
    let log_path = log_line.split('"').nth(1).unwrap();
    assert!(log_path.starts_with(logs.to_str().unwrap()));
    let name = Path::new(log_path).file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("err") && name.ends_with(".log"), "{name}");
    assert!(std::fs::read_to_string(log_path)
        .unwrap()
        .contains("describe-eif"));
    let regular = std::fs::read_to_string(logs.join("nitro_enclaves.log")).unwrap();
    assert!(regular.contains("describe-eif: error: [E1"), "{regular}");

    // run-enclave on a missing image: E35 too; on a tiny memory size: E26 with E306 below.
    let o = nitro(&[
        "run-enclave",
        "--eif-path",
        missing.to_str().unwrap(),
        "--cpu-count",
        "2",
        "--memory",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(35), "{}", stderr(&o));
    let eif = dir.path().join("big.eif");
    std::fs::write(&eif, vec![0u8; 20 << 20]).unwrap();
    let o = nitro(&[
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-count",
        "2",
        "--memory",
        "64M",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(26), "{err}");
    assert!(
        err.starts_with("[ E26 ] Insufficient memory requested.\n[E306] "),
        "{err}"
    );

    // BACKTRACE=1 adds the trace.
    let o = Command::new(bin.join("nitro-cli"))
        .args(["describe-eif", "--eif-path", missing.to_str().unwrap()])
        .env("NITRO_CLI_LOGS_PATH", &logs)
        .env("BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("\n\nBacktrace:\n  Action: describe-eif"),
        "{}",
        stderr(&o)
    );

    // explain knows nitro-cli's codes (on stderr, as nitro-cli) and Cloister's mapping.
    let o = nitro(&["explain", "--error-code", "E26"]);
    assert!(o.status.success());
    let text = stderr(&o);
    assert!(
        text.contains("Insufficient memory requested.") && text.contains("E306"),
        "{text}"
    );
    for code in ["E00", "E39", "E59", "E60"] {
        assert!(
            nitro(&["explain", "--error-code", code]).status.success(),
            "{code}"
        );
    }

    // Under its own name, Cloister keeps its codes and exit classes (1-8) unless asked.
    let cloister = |style: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cloister"));
        c.args(["describe-eif", "--eif-path", missing.to_str().unwrap()])
            .env("NITRO_CLI_LOGS_PATH", &logs)
            .env_remove("CLOISTER_ERROR_STYLE");
        if let Some(s) = style {
            c.env("CLOISTER_ERROR_STYLE", s);
        }
        c.output().unwrap()
    };
    let o = cloister(None);
    assert!(
        (1..=8).contains(&o.status.code().unwrap()),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).starts_with("error: [E1"), "{}", stderr(&o));
    let o = cloister(Some("nitro-cli"));
    assert_eq!(o.status.code(), Some(35), "{}", stderr(&o));
}

/// Writes a blobs directory for process enclaves (init and cmdline; no kernel is booted) and
/// a root file system holding the test application.
fn build_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let (init, app) = static_bins();
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(init, blobs.join("init")).unwrap();
    std::fs::write(blobs.join("cmdline"), "console=ttyS0\n").unwrap();
    std::fs::write(
        blobs.join("bzImage"),
        b"not a kernel: process isolation does not boot one",
    )
    .unwrap();
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::copy(app, rootfs.join("testapp")).unwrap();
    (blobs, rootfs)
}

/// The script of the issue, as a nitro-cli user writes it: build, run two copies of the same
/// image without names, describe, console with a timeout, terminate, and the proxy with the
/// standard allowlist.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share what it started"
)]
fn a_nitro_cli_script_runs_unchanged() {
    let env = Env::new("0-1", 1024);
    let bin = links(env.dir.path());
    let (blobs, rootfs) = build_inputs(env.dir.path());
    let logs = env.dir.path().join("logs");
    let eif = env.dir.path().join("hello.eif");
    let nitro = |args: &[&str]| -> Output {
        let mut c = env.cmd();
        c.env("NITRO_CLI_BLOBS", &blobs)
            .env("CONTAINERS_STORAGE_CONF", storage_conf(env.dir.path()))
            .env("NITRO_CLI_LOGS_PATH", &logs)
            .env_remove("CLOISTER_BLOBS")
            .env_remove("CLOISTER_ERROR_STYLE");
        let mut c2 = Command::new(bin.join("nitro-cli"));
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => c2.env(k, v),
                None => c2.env_remove(k),
            };
        }
        c2.args(args).output().unwrap()
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let o = nitro(args);
        assert!(o.status.success(), "nitro-cli {args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };

    // Build (NITRO_CLI_BLOBS names the blobs): from a Dockerfile with buildah where it is
    // installed (scripts/install-deps.sh installs it), else from a root directory.
    let built = if tools_present(&["buildah"]) {
        let ctx = dockerfile_context(env.dir.path(), "/testapp echo-server 5000");
        json(&[
            "build-enclave",
            "--docker-dir",
            ctx.to_str().unwrap(),
            "--docker-uri",
            "hello:latest",
            "--output-file",
            eif.to_str().unwrap(),
        ])
    } else {
        eprintln!("buildah not installed: building from a root directory instead");
        json(&[
            "build-enclave",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--cmd",
            "/testapp echo-server 5000",
            "--output-file",
            eif.to_str().unwrap(),
        ])
    };
    assert_eq!(keys(&built), ["Measurements"]);
    assert_eq!(
        keys(&built["Measurements"])[..4],
        ["HashAlgorithm", "PCR0", "PCR1", "PCR2"]
    );

    // describe-eif in nitro-cli's key order, Metadata included.
    let d = json(&["describe-eif", "--eif-path", eif.to_str().unwrap()]);
    let order = [
        "EifVersion",
        "Measurements",
        "IsSigned",
        "SigningCertificate",
        "CheckCRC",
        "SignatureCheck",
        "ImageName",
        "ImageVersion",
        "Metadata",
    ];
    let present: Vec<String> = order
        .iter()
        .filter(|k| d.get(**k).is_some())
        .map(|k| k.to_string())
        .collect();
    assert_eq!(keys(&d)[..present.len()], present[..], "{d}");
    assert_eq!(
        keys(&d["Metadata"])[..6],
        [
            "BuildTime",
            "BuildTool",
            "BuildToolVersion",
            "OperatingSystem",
            "KernelVersion",
            "DockerInfo"
        ]
    );

    // Two copies from the same image, the second named hello_1; memory with a suffix.
    let eif_s = eif.to_str().unwrap();
    let args = [
        "run-enclave",
        "--eif-path",
        eif_s,
        "--cpu-count",
        "1",
        "--memory",
        "128M",
    ];
    let first = json(&[&args[..], &["--debug-mode"]].concat());
    let second = json(&args);
    assert_eq!(first["EnclaveName"], "hello");
    assert_eq!(second["EnclaveName"], "hello_1");
    assert_eq!(
        keys(&first),
        [
            "EnclaveName",
            "EnclaveID",
            "ProcessID",
            "EnclaveCID",
            "NumberOfCPUs",
            "CPUIDs",
            "MemoryMiB"
        ]
    );

    let list = json(&["describe-enclaves"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        keys(&list[0])[..10],
        [
            "EnclaveName",
            "EnclaveID",
            "ProcessID",
            "EnclaveCID",
            "NumberOfCPUs",
            "CPUIDs",
            "MemoryMiB",
            "State",
            "Flags",
            "Measurements"
        ]
    );

    // Console with a timeout: returns on its own.
    let id = first["EnclaveID"].as_str().unwrap();
    let o = nitro(&["console", "--enclave-id", id, "--disconnect-timeout", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The second copy is not in debug mode: E44, exit 44.
    let o = nitro(&["console", "--enclave-name", "hello_1"]);
    assert_eq!(o.status.code(), Some(44), "{}", stderr(&o));

    let t = json(&["terminate-enclave", "--enclave-name", "hello_1"]);
    assert_eq!(keys(&t), ["EnclaveName", "EnclaveID", "Terminated"]);
    let o = nitro(&[
        "terminate-enclave",
        "--enclave-id",
        "i-0-enc0000000000000000",
    ]);
    assert_eq!(o.status.code(), Some(40), "{}", stderr(&o));
    json(&["terminate-enclave", "--all"]);
    assert_eq!(json(&["describe-enclaves"]), serde_json::json!([]));

    // The proxy, started as nitro-cli's unit does, with the standard allowlist plus a local
    // service; an enclave reaches that service through it.
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port().to_string();
    let yaml = env.dir.path().join("vsock-proxy.yaml");
    std::fs::write(
        &yaml,
        format!(
            "allowlist:\n- {{address: kms.us-east-1.amazonaws.com, port: 443}}\n\
             - {{address: kms-fips.us-east-1.amazonaws.com, port: 443}}\n\
             - {{address: 127.0.0.1, port: {port}}}\n"
        ),
    )
    .unwrap();
    let o = Command::new(bin.join("vsock-proxy"))
        .args(["8002", "127.0.0.2", "443", "--config"])
        .arg(&yaml)
        .env("CLOISTER_RUN_DIR", &env.run)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("E502"), "{}", stderr(&o));
    let mut proxy = Command::new(bin.join("vsock-proxy"))
        .args(["8000", "127.0.0.1", &port, "--config"])
        .arg(&yaml)
        .env("CLOISTER_RUN_DIR", &env.run)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Wait for the proxy's listener on the host fabric (CID 3, port 8000).
        let listener = env.fabric().join("3_8000.sock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !listener.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "vsock-proxy never listened"
            );
            assert!(proxy.try_wait().unwrap().is_none(), "vsock-proxy exited");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let client = env.dir.path().join("client.eif");
        json(&[
            "build-enclave",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--cmd",
            "/testapp connect-parent 8000 via-proxy",
            "--output-file",
            client.to_str().unwrap(),
        ]);
        let c = json(&[
            "run-enclave",
            "--eif-path",
            client.to_str().unwrap(),
            "--cpu-count",
            "1",
            "--memory",
            "128",
            "--debug-mode",
        ]);
        service.set_nonblocking(false).unwrap();
        let (conn, _) = service.accept().unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        assert_eq!(line, "via-proxy\n");
        std::io::Write::write_all(&mut &conn, b"hello from the host\n").unwrap();
        let id = c["EnclaveID"].as_str().unwrap();
        let o = nitro(&["console", "--enclave-id", id, "--disconnect-timeout", "2"]);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("parent answered: hello from the host"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        json(&["terminate-enclave", "--all"]);
    }));
    let _ = proxy.kill();
    let out = proxy.wait_with_output().unwrap();
    if let Err(e) = result {
        eprintln!("vsock-proxy: {}", String::from_utf8_lossy(&out.stderr));
        std::panic::resume_unwind(e);
    }
}

/// A user and a group made for one test, removed when dropped.
struct TestAccounts {
    group: String,
    users: Vec<String>,
}

impl TestAccounts {
    fn create(tag: &str) -> Self {
        let group = format!("clt{tag}{}", std::process::id() % 100_000);
        let ok = |c: &mut Command| {
            let o = c.output().expect("run account tool");
            assert!(o.status.success(), "{c:?}: {}", stderr(&o));
        };
        ok(Command::new("groupadd").arg(&group));
        let mut accounts = TestAccounts {
            group: group.clone(),
            users: Vec::new(),
        };
        for (suffix, member) in [("m", true), ("n", false)] {
            let user = format!("{group}{suffix}");
            let mut c = Command::new("useradd");
            c.args(["--no-create-home", "--shell", "/usr/sbin/nologin"]);
            if member {
                c.args(["--gid", &group]);
            } else {
                c.arg("--user-group");
            }
            ok(c.arg(&user));
            accounts.users.push(user);
        }
        accounts
    }

    fn ids(&self, user: &str) -> (u32, u32) {
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, user]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        (id("-u"), id("-g"))
    }
}

impl Drop for TestAccounts {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = Command::new("userdel").arg(u).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// Members of the daemon's group run, describe, attach to and terminate enclaves without root;
/// other users cannot reach the daemon, and a member cannot make it read a file they cannot.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share what it started"
)]
fn group_members_use_enclaves_through_the_daemon() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to create users and start the daemon");
        return;
    }
    let env = Env::new("0-1", 1024);
    let bin = links(env.dir.path());
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let eif = enclave_support::build_eif(env.dir.path(), "hello", &["sleep"]);
    std::fs::set_permissions(&eif, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let secret = env.dir.path().join("root-only.eif");
    std::fs::copy(&eif, &secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let accounts = TestAccounts::create("d");
    let socket = env.dir.path().join("daemon.sock");
    let mut daemon = env
        .cmd()
        .args(["daemon", "--group", &accounts.group, "--socket"])
        .arg(&socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon never listened"
        );
        assert!(daemon.try_wait().unwrap().is_none(), "daemon exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let as_user = |user: &str, args: &[&str]| -> Output {
        let (uid, gid) = accounts.ids(user);
        Command::new(bin.join("nitro-cli"))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CLOISTER_DAEMON_SOCKET", &socket)
            .env("NITRO_CLI_LOGS_PATH", env.dir.path().join("user-logs"))
            .current_dir("/")
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let member = accounts.users[0].as_str();
        let json = |args: &[&str]| -> serde_json::Value {
            let o = as_user(member, args);
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
            serde_json::from_slice(&o.stdout).unwrap()
        };
        let eif_s = eif.to_str().unwrap();
        let run = [
            "run-enclave",
            "--eif-path",
            eif_s,
            "--cpu-count",
            "1",
            "--memory",
            "128",
        ];
        let first = json(&[&run[..], &["--debug-mode"]].concat());
        assert_eq!(first["EnclaveName"], "hello");
        let second = json(&run);
        assert_eq!(second["EnclaveName"], "hello_1");
        let list = json(&["describe-enclaves"]);
        assert_eq!(list.as_array().unwrap().len(), 2);
        let id = first["EnclaveID"].as_str().unwrap();
        let o = as_user(
            member,
            &["console", "--enclave-id", id, "--disconnect-timeout", "1"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let o = as_user(member, &["console", "--enclave-name", "hello_1"]);
        assert_eq!(o.status.code(), Some(44), "{}", stderr(&o));
        // A file the member cannot read is not read for them.
        let o = as_user(
            member,
            &[
                &run[..2],
                &[
                    secret.to_str().unwrap(),
                    "--cpu-count",
                    "1",
                    "--memory",
                    "128",
                ],
            ]
            .concat(),
        );
        assert_eq!(o.status.code(), Some(35), "{}", stderr(&o));
        let t = json(&["terminate-enclave", "--enclave-name", "hello_1"]);
        assert_eq!(t["Terminated"], true);
        json(&["terminate-enclave", "--all"]);
        assert_eq!(json(&["describe-enclaves"]), serde_json::json!([]));
        // Someone outside the group cannot reach the daemon.
        let o = as_user(&accounts.users[1], &["describe-enclaves"]);
        assert_eq!(o.status.code(), Some(39), "{}", stderr(&o));
        assert!(stderr(&o).contains("[E320]"), "{}", stderr(&o));
    }));
    let _ = daemon.kill();
    let out = daemon.wait_with_output().unwrap();
    env.terminate_all();
    if let Err(e) = result {
        eprintln!("daemon: {}", String::from_utf8_lossy(&out.stderr));
        std::panic::resume_unwind(e);
    }
}

/// Whether all of `tools` are installed.
fn tools_present(tools: &[&str]) -> bool {
    tools.iter().all(|t| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
    })
}

/// A containers-storage configuration private to `dir`, so buildah leaves nothing behind.
fn storage_conf(dir: &Path) -> PathBuf {
    let conf = dir.join("storage.conf");
    if !conf.exists() {
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/storage\"\nrunroot = \"{0}/storage-run\"\n",
                dir.display()
            ),
        )
        .unwrap();
    }
    conf
}

/// A Dockerfile context holding the test application, whose command is `cmd`.
fn dockerfile_context(dir: &Path, cmd: &str) -> PathBuf {
    let (_, app) = static_bins();
    let ctx = dir.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(app, ctx.join("testapp")).unwrap();
    let argv: Vec<String> = cmd.split(' ').map(|a| format!("{a:?}")).collect();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY testapp /testapp\nCMD [{}]\n",
            argv.join(", ")
        ),
    )
    .unwrap();
    ctx
}

/// `--docker-dir` builds with buildah and `--docker-uri` pulls from a registry over the
/// distribution API, both with no Docker engine; the pulled image measures as the built one.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share what it started"
)]
fn dockerfile_build_and_registry_pull_without_an_engine() {
    if !tools_present(&["buildah", "docker-registry"]) {
        eprintln!(
            "skipped: buildah and docker-registry are not installed (scripts/install-deps.sh)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = links(dir.path());
    let (blobs, _) = build_inputs(dir.path());
    let conf = storage_conf(dir.path());
    std::fs::create_dir_all(dir.path().join("docker-config")).unwrap();
    std::fs::write(
        dir.path().join("docker-config/config.json"),
        r#"{"auths":{}}"#,
    )
    .unwrap();
    let nitro = |args: &[&str]| -> Output {
        Command::new(bin.join("nitro-cli"))
            .args(args)
            .env("NITRO_CLI_BLOBS", &blobs)
            .env("NITRO_CLI_LOGS_PATH", dir.path().join("logs"))
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .env(
                "DOCKER_HOST",
                format!("unix://{}/no-engine.sock", dir.path().display()),
            )
            .env("DOCKER_CONFIG", dir.path().join("docker-config"))
            .env_remove("CLOISTER_BLOBS")
            .output()
            .unwrap()
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let o = nitro(args);
        assert!(o.status.success(), "nitro-cli {args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };

    // A Dockerfile, built by buildah.
    let ctx = dockerfile_context(dir.path(), "/testapp sleep");
    let built_eif = dir.path().join("built.eif");
    let built = json(&[
        "build-enclave",
        "--docker-dir",
        ctx.to_str().unwrap(),
        "--docker-uri",
        "hello:v1",
        "--output-file",
        built_eif.to_str().unwrap(),
    ]);
    // A missing Dockerfile is E612 (nitro-cli's E49).
    let o = nitro(&[
        "build-enclave",
        "--docker-dir",
        dir.path().to_str().unwrap(),
        "--docker-uri",
        "x:1",
        "--output-file",
        "/dev/null",
    ]);
    assert_eq!(o.status.code(), Some(49), "{}", stderr(&o));

    // A registry on the loopback, and the image pushed into it by buildah.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}/registry\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut registry = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry never listened"
            );
            assert!(registry.try_wait().unwrap().is_none(), "registry exited");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let uri = format!("127.0.0.1:{port}/team/hello:v1");
        let push = Command::new("buildah")
            .args([
                "--storage-driver",
                "vfs",
                "push",
                "--quiet",
                "--tls-verify=false",
            ])
            .arg("hello:v1")
            .arg(format!("docker://{uri}"))
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .output()
            .unwrap();
        assert!(push.status.success(), "buildah push: {}", stderr(&push));

        let pulled_eif = dir.path().join("pulled.eif");
        let pulled = json(&[
            "build-enclave",
            "--docker-uri",
            &uri,
            "--output-file",
            pulled_eif.to_str().unwrap(),
        ]);
        for pcr in ["PCR0", "PCR1", "PCR2"] {
            assert_eq!(
                pulled["Measurements"][pcr], built["Measurements"][pcr],
                "{pcr}"
            );
        }
        // A tag the registry does not have: nitro-cli's E50.
        let o = nitro(&[
            "build-enclave",
            "--docker-uri",
            &format!("127.0.0.1:{port}/team/hello:nope"),
            "--output-file",
            dir.path().join("x.eif").to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(50), "{}", stderr(&o));
    }));
    let _ = registry.kill();
    let out = registry.wait_with_output().unwrap();
    if let Err(e) = result {
        eprintln!("registry: {}", String::from_utf8_lossy(&out.stderr));
        std::panic::resume_unwind(e);
    }
}
