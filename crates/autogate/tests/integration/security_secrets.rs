//! Whoever can write the cluster's etcd cannot move one secret's sealed value under another
//! secret's name: the value is bound to its name, so the copy fails to open, naming the secret,
//! and the service that uses the other secret never sees the stolen plaintext.

use std::path::Path;
use std::time::Duration;

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::{Autogate, Output};

const DEADLINE: Duration = Duration::from_secs(60);
const PROD: &str = "PROD-PASSWORD-5b1e";
const LAB: &str = "lab-password-77aa";

fn cli(work: &Path, etcd: &EtcdServer, key: &Path, args: &[&str]) -> Output {
    Autogate::new(args.iter().copied())
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .env(
            "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
            key.display().to_string(),
        )
        .output(DEADLINE)
}

fn ok(out: &Output, what: &str) {
    assert_eq!(
        out.code(),
        Some(0),
        "{what}: {}\n{}",
        out.stdout,
        out.stderr
    );
}

fn etcdctl(etcd: &EtcdServer, args: &[&str]) -> String {
    let out = etcd.etcdctl().args(args).output().expect("etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn a_sealed_value_copied_under_another_secrets_name_does_not_open() {
    let etcd = EtcdServer::start();
    let t = tempfile::tempdir().expect("tempdir");
    let work = t.path().join("work");
    let key = t.path().join("cluster.key");
    std::fs::write(&key, "an-example-cluster-key-of-enough-bytes-0123456789").expect("key");
    let run = |args: &[&str]| cli(&work, &etcd, &key, args);

    ok(
        &run(&["create", "secret", "prod-db", "--value", PROD]),
        "prod secret",
    );
    ok(
        &run(&["create", "secret", "lab-db", "--value", LAB]),
        "lab secret",
    );
    ok(
        &run(&[
            "create",
            "executable-object",
            "sh",
            "--exec-command",
            "/bin/sh",
        ]),
        "executable-object",
    );
    ok(
        &run(&[
            "create",
            "service",
            "executable",
            "lab-check",
            "--executable-object",
            "sh",
            "--arg-format=-c {{.Value}}",
            "--secret",
            "name=lab-db,type=env,target=DB",
        ]),
        "service",
    );
    // The script prints the value reversed, so the runner's masking cannot hide what it got.
    let reveal = [
        "run",
        "service",
        "executable",
        "lab-check",
        "--set",
        "cmd=echo \"$DB\" | rev",
        "--raw",
    ];
    let before = run(&reveal);
    ok(&before, "run before");
    let reversed = |s: &str| s.chars().rev().collect::<String>();
    assert!(before.stdout.contains(&reversed(LAB)), "{}", before.stdout);

    // The attack: prod-db's record, value and all, written over lab-db's key.
    let keys = etcdctl(&etcd, &["get", "--prefix", "/autogate/", "--keys-only"]);
    let find = |suffix: &str| {
        keys.lines()
            .find(|k| k.ends_with(suffix))
            .unwrap_or_else(|| panic!("no key ending {suffix} in {keys}"))
            .to_owned()
    };
    let (prod_key, lab_key) = (find("/secret/prod-db"), find("/secret/lab-db"));
    let prod_record = etcdctl(&etcd, &["get", &prod_key, "--print-value-only"]);
    let stolen = prod_record.trim_end().replace("\"prod-db\"", "\"lab-db\"");
    assert!(
        stolen.contains("\"v2:"),
        "sealed bound to its name: {stolen}"
    );
    etcdctl(&etcd, &["put", &lab_key, &stolen]);

    let after = run(&reveal);
    assert_ne!(after.code(), Some(0), "{}", after.stdout);
    let said = format!("{}{}", after.stdout, after.stderr);
    assert!(
        said.contains("wrong key file or corrupted secret lab-db"),
        "names the secret: {said}"
    );
    assert!(
        !said.contains(PROD) && !said.contains(&reversed(PROD)),
        "the prod value reached the lab service: {said}"
    );
}
