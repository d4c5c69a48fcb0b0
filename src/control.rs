//! The control thread: everything that changes the live state runs here, on its own small
//! runtime, never on a proxy worker — the admin API, the snapshot file watcher, SIGHUP config
//! reloads and the staleness ticker.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use log::{error, info, warn};

use crate::live::{State, STALENESS_TICK};

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Poll the snapshot file; when it changes and then holds still for a moment (a writer that
/// writes in place is done; an atomic rename is seen whole), read it and offer it to the state.
async fn watch_snapshot_file(state: Arc<State>) {
    let mut last = {
        let live = state.live();
        stamp(&live.config.snapshot.path)
    };
    loop {
        let (path, interval) = {
            let live = state.live();
            (
                live.config.snapshot.path.clone(),
                live.config.snapshot.poll_interval,
            )
        };
        tokio::time::sleep(interval).await;
        let now = stamp(&path);
        if now.is_none() || now == last {
            continue;
        }
        // Debounce: wait until the file holds still.
        tokio::time::sleep(
            (interval / 4).clamp(Duration::from_millis(20), Duration::from_millis(250)),
        )
        .await;
        let settled = stamp(&path);
        if settled != now {
            continue;
        }
        last = settled;
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
            Ok(text) => s.replace_snapshot(&text, &format!("file {}", path.display())),
            Err(e) => Err(vec![format!("{}: cannot read: {e}", path.display())]),
        })
        .await;
        match result {
            Ok(Ok(version)) => info!("snapshot file change applied: {version}"),
            Ok(Err(_)) => {} // logged and counted by the state
            Err(e) => error!("snapshot file task failed: {e}"),
        }
    }
}

async fn reload_on_sighup(state: Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGHUP: {e}; use the admin API to reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the config");
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || s.reload_config("SIGHUP")).await;
    }
}

async fn staleness_ticker(state: Arc<State>) {
    loop {
        tokio::time::sleep(STALENESS_TICK).await;
        state.update_staleness();
    }
}

/// Start the control thread. Binds the admin listener first, so a port problem is an error
/// here and not a silent absence.
pub fn spawn(state: Arc<State>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = state.live().config.admin.clone();
    let listener = match &admin {
        Some(a) => {
            let l = std::net::TcpListener::bind(a.listen)?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    std::thread::Builder::new()
        .name("permgate-control".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Some(l) = listener {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => {
                            info!(
                                "admin API on {}",
                                l.local_addr().map(|a| a.to_string()).unwrap_or_default()
                            );
                            tokio::spawn(crate::admin::serve(state.clone(), l));
                        }
                        Err(e) => error!("admin listener: {e}"),
                    }
                }
                if state.live().config.snapshot.watch {
                    tokio::spawn(watch_snapshot_file(state.clone()));
                }
                tokio::spawn(staleness_ticker(state.clone()));
                reload_on_sighup(state).await;
                // SIGHUP could not be installed: keep the other tasks running.
                std::future::pending::<()>().await;
            });
        })?;
    Ok(())
}
