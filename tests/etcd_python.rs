//! The etcd front through a Python etcd v3 client from PyPI (`etcd3` 0.12, on gRPC):
//! `tests/etcd/python_client.py` runs against a 3-node mmapd cluster and against a
//! real etcd 3.4 (Debian's etcd-server), and prints the same lines for both. The
//! client is installed into `target/py-etcd` (a virtualenv) from PyPI on first use;
//! without PyPI or python3 this test fails, never passes without having run.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const CLIENT: &str = "etcd3==0.12.0";

/// The virtualenv's python with `etcd3` installed (made once, then reused).
fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-etcd");
    let python = venv.join("bin/python");
    let installed = venv.join("installed");
    if std::fs::read_to_string(&installed).ok().as_deref() == Some(CLIENT) {
        return python;
    }
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3");
    assert!(made.success(), "python3 -m venv failed");
    let pip = Command::new(&python).args(["-m", "pip", "install", "-q", CLIENT]).output().expect("pip");
    assert!(pip.status.success(), "pip install {CLIENT}: {}", String::from_utf8_lossy(&pip.stderr));
    std::fs::write(&installed, CLIENT).unwrap();
    python
}

fn run_script(python: &PathBuf, port: u16) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/etcd/python_client.py");
    let output = Command::new(python)
        .arg(script)
        .arg(port.to_string())
        // etcd3 0.12's generated code predates protobuf 4's C++ descriptors.
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("python");
    assert!(
        output.status.success(),
        "the script against port {port}:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

#[test]
fn the_python_etcd3_client_sees_the_same_as_against_etcd() {
    let python = python();
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.port(cluster.others(leader)[0]);
    let etcd = RealEtcd::start();
    let theirs = run_script(&python, etcd.port);
    let ours = run_script(&python, follower);
    assert!(theirs.lines().count() >= 8, "{theirs}");
    for (step, (ours, theirs)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(ours, theirs, "step {step}");
    }
    assert_eq!(ours.lines().count(), theirs.lines().count(), "mmapd:\n{ours}\netcd:\n{theirs}");
}
