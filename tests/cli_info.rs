//! `QUIVER_SIMD` must really cap the tier a process runs, and a typo must not be silently taken for
//! a tier: this runs the `quiver` binary as a user would and reads what it reports.

use std::process::Command;

fn info(simd: Option<&str>) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    cmd.arg("info");
    match simd {
        Some(v) => cmd.env("QUIVER_SIMD", v),
        None => cmd.env_remove("QUIVER_SIMD"),
    };
    let out = cmd.output().expect("run quiver info");
    assert!(out.status.success(), "quiver info failed: {out:?}");
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// The tier name on the `simd tier active:` line.
fn active_tier(stdout: &str) -> &str {
    let line = stdout.lines().find(|l| l.starts_with("simd tier active")).expect("active line");
    line.split_once(':').unwrap().1.split_whitespace().next().expect("a tier name")
}

#[test]
fn quiver_simd_scalar_caps_the_active_tier() {
    let (out, _) = info(Some("scalar"));
    assert_eq!(active_tier(&out), "scalar", "{out}");
}

#[test]
fn the_self_check_agrees_with_scalar_in_every_cap() {
    for cap in [None, Some("avx2"), Some("avx512"), Some("scalar")] {
        let (out, _) = info(cap);
        let line = out.lines().find(|l| l.starts_with("self-check")).expect("self-check line");
        // "self-check l2(96):    <fast> (scalar <slow>)"
        let rest = line.split_once("):").expect("self-check format").1;
        let nums: Vec<&str> =
            rest.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).collect();
        assert_eq!(nums.len(), 2, "{line}");
        assert_eq!(nums[0], nums[1], "{line}");
    }
}

#[test]
fn an_unknown_quiver_simd_value_is_reported_not_silently_used() {
    let (out, err) = info(Some("avx-512"));
    assert!(err.contains("ignoring QUIVER_SIMD") && err.contains("avx-512"), "stderr: {err}");
    let (best, _) = info(None);
    assert_eq!(active_tier(&out), active_tier(&best));
}

/// `quiver search … | head -3` used to end in a panic and a backtrace ("failed printing to
/// stdout") when `head` closed the pipe. Now a command whose reader has gone ends as other Unix
/// tools do: by `SIGPIPE`, silently. The reader is closed before the child starts, so its first
/// write fails whatever the timing.
#[test]
fn a_report_piped_into_a_closed_reader_ends_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .arg("info")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run quiver info");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "quiver info panicked on a closed pipe: {stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
}
