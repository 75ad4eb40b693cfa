//! Log lines limited per remote address: a flood of refused TLS handshakes (a client
//! or a misconfigured node sending a bad certificate in a loop, or someone doing so on
//! purpose) costs at most one warning per address per `INTERVAL`, so it cannot flood
//! the journal or the disk under it.
//!
//! The first refusal from an address is logged at once; those within `INTERVAL` of the
//! last logged one are counted, not logged; the next one logged after that carries the
//! count of those it stands for (`not_logged`). Every refusal is also counted in
//! `/metrics` (`mmapd_tls_handshakes_refused_total`), so a flood that stops leaves its
//! full size there even though its last count was never logged.
//!
//! The addresses tracked are bounded (`MAX_ADDRESSES`): when the table is full, windows
//! that have ended are dropped, and if every one is still open, further addresses
//! share one window (logged as "other addresses"), so a flood from many addresses is
//! limited too and costs bounded memory. The caller passes the time, so the rule is
//! tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one line per address per this interval.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// The most addresses with a window of their own at once.
pub const MAX_ADDRESSES: usize = 1024;

/// One address's window: when its last line was logged, and what has not been since.
#[derive(Clone, Copy, Debug)]
struct Window {
    logged_at: Instant,
    /// Refusals since `logged_at` that were not logged.
    not_logged: u64,
}

/// Which addresses were logged when. `None` is the window shared by every address
/// that found the table full.
#[derive(Debug, Default)]
pub struct PerAddress {
    /// Invariant: at most `MAX_ADDRESSES` entries with `Some` keys, plus the shared one.
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

/// What to do with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log a line now, saying how many earlier events from the same source it stands
    /// for (0: none); `shared`: the source is "other addresses", the table being full.
    Log {
        /// Events since the last line from this source that were not logged.
        not_logged: u64,
        /// The address had no window of its own.
        shared: bool,
    },
    /// Count it only: a line for this source went out less than `INTERVAL` ago.
    Quiet,
}

impl PerAddress {
    /// Whether an event from `address` at `now` is logged.
    pub fn check(&self, address: IpAddr, now: Instant) -> Verdict {
        let mut windows = self.windows.lock().expect("log limit lock");
        let mut key = Some(address);
        if !windows.contains_key(&key) && windows.len() >= MAX_ADDRESSES {
            windows.retain(|source, window| {
                source.is_none() || now.saturating_duration_since(window.logged_at) < INTERVAL
            });
            if windows.keys().filter(|source| source.is_some()).count() >= MAX_ADDRESSES {
                key = None;
            }
        }
        let verdict = match windows.get_mut(&key) {
            Some(window) if now.saturating_duration_since(window.logged_at) < INTERVAL => {
                window.not_logged += 1;
                Verdict::Quiet
            }
            Some(window) => {
                let not_logged = window.not_logged;
                *window = Window { logged_at: now, not_logged: 0 };
                Verdict::Log { not_logged, shared: key.is_none() }
            }
            None => {
                windows.insert(key, Window { logged_at: now, not_logged: 0 });
                Verdict::Log { not_logged: 0, shared: key.is_none() }
            }
        };
        assert!(
            windows.keys().filter(|source| source.is_some()).count() <= MAX_ADDRESSES,
            "the log limit tracks more than {MAX_ADDRESSES} addresses"
        );
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_line_per_address_per_interval_and_the_next_line_counts_the_rest() {
        let limit = PerAddress::default();
        let start = Instant::now();
        assert_eq!(limit.check(ip(1), start), Verdict::Log { not_logged: 0, shared: false });
        for i in 1..=100 {
            assert_eq!(limit.check(ip(1), start + Duration::from_millis(i * 10)), Verdict::Quiet);
        }
        // Another address has its own window.
        assert_eq!(limit.check(ip(2), start), Verdict::Log { not_logged: 0, shared: false });
        assert_eq!(limit.check(ip(1), start + INTERVAL - Duration::from_millis(1)), Verdict::Quiet);
        assert_eq!(limit.check(ip(1), start + INTERVAL), Verdict::Log { not_logged: 101, shared: false });
        assert_eq!(limit.check(ip(1), start + INTERVAL), Verdict::Quiet);
        assert_eq!(limit.check(ip(1), start + INTERVAL * 5), Verdict::Log { not_logged: 1, shared: false });
        assert_eq!(limit.check(ip(1), start + INTERVAL * 7), Verdict::Log { not_logged: 0, shared: false });
    }

    #[test]
    fn a_flood_from_more_addresses_than_the_table_holds_shares_one_window() {
        let limit = PerAddress::default();
        let start = Instant::now();
        let address = |n: usize| IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        let mut lines = 0;
        for n in 0..MAX_ADDRESSES * 3 {
            if let Verdict::Log { .. } = limit.check(address(n), start) {
                lines += 1;
            }
        }
        // One line each for the addresses that got a window, one for all the rest.
        assert_eq!(lines, MAX_ADDRESSES + 1);
        assert_eq!(
            limit.check(address(MAX_ADDRESSES * 3), start + INTERVAL / 2),
            Verdict::Quiet,
            "the shared window is still open"
        );
        // Once the windows have ended, new addresses get their own again.
        let later = start + INTERVAL;
        assert_eq!(
            limit.check(address(MAX_ADDRESSES * 4), later),
            Verdict::Log { not_logged: 0, shared: false }
        );
        let windows = limit.windows.lock().unwrap();
        assert!(windows.len() <= MAX_ADDRESSES + 1, "{} windows", windows.len());
        assert_eq!(windows.get(&None).map(|window| window.not_logged), Some(2 * MAX_ADDRESSES as u64));
    }
}
