//! Change notification: wakes the reader as soon as a watched folder changes, so a new line is
//! picked up at once at idle without busy polling. inotify (through `notify`) watches the folder
//! each glob starts from; polling every `poll_interval` stays as the safety net for file systems
//! and events that notifications miss (NFS, overflowing queues).

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::{EventKind, RecursiveMode, Watcher};

/// What a change tells the reader.
#[derive(Debug, Default)]
pub struct ChangeSignal {
    /// Something changed: run a read pass now.
    pub wake: tokio::sync::Notify,
    /// A file appeared, disappeared or was renamed: re-scan the globs in that pass.
    pub rescan: AtomicBool,
}

/// Keeps the folder watches alive; dropping it stops them.
pub struct ChangeWatcher {
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Watches the base folders of `patterns`. Where notifications are unavailable, says so once
/// and returns a watcher that does nothing: polling still finds every change.
pub fn watch_changes(patterns: &[String], signal: Arc<ChangeSignal>) -> ChangeWatcher {
    let handler_signal = signal.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // An error (such as a queue overflow) may hide changes: look at everything.
            handler_signal.rescan.store(true, Ordering::Relaxed);
            handler_signal.wake.notify_one();
            return;
        };
        if matches!(event.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))) {
            handler_signal.rescan.store(true, Ordering::Relaxed);
        }
        if !matches!(event.kind, EventKind::Access(_)) {
            handler_signal.wake.notify_one();
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "file change notifications are unavailable; relying on polling");
            return ChangeWatcher { _watcher: None };
        }
    };
    for pattern in patterns {
        let (folder, mode) = base_folder(pattern);
        if let Err(error) = watcher.watch(&folder, mode) {
            tracing::warn!(folder = %folder.display(), %error, "cannot watch folder for changes; relying on polling for it");
        }
    }
    ChangeWatcher { _watcher: Some(watcher) }
}

/// The folder a glob starts from (its components before the first with a wildcard), and
/// whether files below it can be deeper than one level (`**`).
pub fn base_folder(pattern: &str) -> (PathBuf, RecursiveMode) {
    let mut folder = PathBuf::new();
    let components: Vec<Component<'_>> = Path::new(pattern).components().collect();
    let mut wildcard_at = components.len();
    for (index, component) in components.iter().enumerate() {
        let text = component.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[', '{']) {
            wildcard_at = index;
            break;
        }
    }
    let literal = if wildcard_at == components.len() { components.len().saturating_sub(1) } else { wildcard_at };
    for component in &components[..literal] {
        folder.push(component);
    }
    let rest_is_deep = components[wildcard_at.min(components.len())..].iter().any(|component| component.as_os_str() == "**")
        || components.len().saturating_sub(wildcard_at) > 1;
    let mode = if rest_is_deep { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
    (folder, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_folder_is_the_part_before_the_first_wildcard() {
        assert_eq!(base_folder("/srv/conect/source/*.log"), (PathBuf::from("/srv/conect/source"), RecursiveMode::NonRecursive));
        assert_eq!(base_folder("/var/log/**/*.log"), (PathBuf::from("/var/log"), RecursiveMode::Recursive));
        assert_eq!(base_folder("/var/log/app.log"), (PathBuf::from("/var/log"), RecursiveMode::NonRecursive));
        assert_eq!(base_folder("/var/log/*/app.log"), (PathBuf::from("/var/log"), RecursiveMode::Recursive));
    }
}
