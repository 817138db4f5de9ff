//! `quiver serve` must refuse a configuration that would expose data by accident or fail later
//! in a way that names nothing. An empty `--auth-token` (or `QUIVER_AUTH_TOKEN=`) once turned
//! authentication off without a word; bad TLS material printed "listening on grpc+tls://…" and
//! then died with a bare "transport error". Each refusal must come before the port is bound
//! (no "listening" line), exit non-zero, name the flag or file and the reason, and leave no data
//! directory behind. A good start must say whether authentication and TLS are on.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn serve(data: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    cmd.arg("serve").arg("--data").arg(data).args(["--listen", "127.0.0.1:0"]).args(args);
    cmd.env_remove("QUIVER_AUTH_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("quiver serve {args:?} did not refuse to start: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refused(args: &[&str], env: &[(&str, &str)], expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let out = serve(&data, args, env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} {env:?} must fail: {stdout} {stderr}");
    assert!(!stdout.contains("listening"), "{args:?}: refused after binding: {stdout}");
    for e in expect {
        assert!(stderr.contains(e), "{args:?} {env:?}: stderr should say {e:?}: {stderr}");
    }
    assert!(!data.exists(), "{args:?}: a refused start must not create the database");
}

#[test]
fn an_empty_auth_token_refuses_to_start_instead_of_disabling_authentication() {
    refused(&["--auth-token", ""], &[], &["refusing to start without authentication"]);
    refused(&["--auth-token", "  "], &[], &["refusing to start without authentication"]);
    refused(&[], &[("QUIVER_AUTH_TOKEN", "")], &["refusing to start without authentication"]);
}

#[test]
fn bad_tls_material_is_refused_before_listening_naming_the_file_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem at all\n").unwrap();
    let j = junk.to_str().unwrap();
    refused(&["--tls-cert", j, "--tls-key", j], &[], &[j, "--tls-cert", "no PEM CERTIFICATE"]);
    let missing = dir.path().join("missing.pem");
    let m = missing.to_str().unwrap();
    refused(&["--tls-cert", m, "--tls-key", j], &[], &["--tls-cert", m]);
}

#[test]
fn a_good_start_says_whether_authentication_and_tls_are_on() {
    for (args, want) in [
        (vec![], "authentication: OFF (no token); TLS: OFF (plaintext)"),
        (vec!["--auth-token", "s3cret"], "authentication: on (bearer token); TLS: OFF"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .arg("serve")
            .arg("--data")
            .arg(dir.path().join("db"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .env_remove("QUIVER_AUTH_TOKEN")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut found = false;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(want) => {
                    found = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found, "{args:?}: no start-up line saying {want:?}");
    }
}
