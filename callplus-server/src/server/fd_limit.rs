//! The process's open-file limit (`RLIMIT_NOFILE`) against what the configured connection
//! bounds need.
//!
//! Every connection is a file descriptor. When the process runs out, `accept` fails for both
//! listeners and nobody can connect, so at start the server raises its soft limit as far as the
//! hard limit allows towards what it needs, and warns when that is still too low.

/// Descriptors besides connections: storage files, the runtime, logs, the push client.
pub(crate) const BASE_FILES: u64 = 64;

/// Descriptors the server needs: `max_connections` device connections, the admin API's
/// connections (`admin_connections`, 0 without it) and [`BASE_FILES`]. `None` when device
/// connections are unbounded.
pub(crate) fn needed(max_connections: usize, admin_connections: usize) -> Option<u64> {
    if max_connections == 0 {
        return None;
    }
    let connections = u64::try_from(max_connections.saturating_add(admin_connections)).unwrap_or(u64::MAX);
    Some(connections.saturating_add(BASE_FILES))
}

/// Raises the soft open-file limit towards what is `needed` and logs a warning when the limit
/// stays below it.
#[cfg(unix)]
pub(crate) fn check(needed: Option<u64>, max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    let Some(needed) = needed else { return };
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let Some(soft) = limit.current else { return };
    if soft >= needed {
        return;
    }
    let target = limit.maximum.map_or(needed, |hard| hard.min(needed));
    let mut effective = soft;
    if target > soft {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: limit.maximum }) {
            Ok(()) => {
                tracing::info!(from = soft, to = target, "raised the open-file limit (RLIMIT_NOFILE)");
                effective = target;
            }
            Err(e) => tracing::debug!(error = %e, "cannot raise the open-file limit"),
        }
    }
    if effective < needed {
        tracing::warn!(
            limit = effective,
            needed,
            max_connections,
            "the open-file limit (RLIMIT_NOFILE) is lower than the configured connections need: \
             raise it (ulimit -n, systemd LimitNOFILE=) or lower --max-connections"
        );
    }
}

/// Nothing to check where there is no `RLIMIT_NOFILE`.
#[cfg(not(unix))]
pub(crate) fn check(_needed: Option<u64>, _max_connections: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_the_base_are_needed() {
        assert_eq!(needed(1000, 256), Some(1000 + 256 + BASE_FILES));
        assert_eq!(needed(1000, 0), Some(1000 + BASE_FILES));
        assert_eq!(needed(0, 256), None, "unbounded");
    }
}
