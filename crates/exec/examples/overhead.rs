//! Engine overhead: a no-op executable service with a cached checkout (full commit id, so no
//! fetch) against spawning `/bin/true` directly. Prints p50/p99 of each.
//!
//! `cargo run --release -p autogate-exec --example overhead [iterations]`

use std::process::Command;
use std::time::{Duration, Instant};

use autogate_exec::{Engine, EngineConfig, Inputs, Repository, Secrets, Service, ServiceType};
use tokio_util::sync::CancellationToken;

fn git(dir: &std::path::Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new("git")
        .args(["-c", "user.name=b", "-c", "user.email=b@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let t = tempfile::tempdir()?;
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("bin"))?;
    std::fs::write(src.join("bin/readme.txt"), "a small repository\n")?;
    git(&src, &["init", "-q"])?;
    git(&src, &["add", "-A"])?;
    git(&src, &["commit", "-q", "-m", "x"])?;
    let commit = git(&src, &["rev-parse", "HEAD"])?;

    let engine = Engine::new(EngineConfig::new(t.path().join("work")));
    let mut svc = Service::new("noop", ServiceType::Executable);
    svc.executable = Some("/bin/true".into());
    svc.repository = Some(Repository {
        url: format!("file://{}", src.display()),
        reference: Some(commit),
        credentials: None,
    });
    let cancel = CancellationToken::new();
    let (inputs, secrets) = (Inputs::new(), Secrets::new());
    engine.run(&svc, &inputs, &secrets, &cancel).await?; // fills the cache

    let mut via_engine = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        let r = engine.run(&svc, &inputs, &secrets, &cancel).await?;
        via_engine.push(s.elapsed());
        assert_eq!(r.return_code, 0);
    }
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        let st = tokio::process::Command::new("/bin/true").status().await?;
        direct.push(s.elapsed());
        assert!(st.success());
    }
    let (e50, e99) = (pct(&mut via_engine, 0.5), pct(&mut via_engine, 0.99));
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    println!("iterations: {n}");
    println!("engine (cached checkout, workspace copy, /bin/true): p50 {e50:?}  p99 {e99:?}");
    println!("direct /bin/true:                                    p50 {d50:?}  p99 {d99:?}");
    println!("overhead p50: {:?}", e50.saturating_sub(d50));
    Ok(())
}
