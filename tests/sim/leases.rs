//! The lease clients' records, and the lease safety check: a lease is never expired
//! early. Every grant or keepalive a client saw acknowledged, invoked at tick T, makes
//! the lease live until at least T + its TTL; the leader's revoke of it must not be
//! applied by any node before then, whatever leaders came and went (a new leader gives
//! every lease its full TTL from when it took over; a deposed leader must not extend
//! one). Time: one simulator tick is `TICK_MS` of the monotonic clock the cores are
//! given (`DriverCore::observe_time`).

use std::collections::HashMap;

/// Milliseconds of the cores' clock per simulator tick: with `ELECTION_TICKS` of 10, an
/// election timeout of 500 ms, so a 1 s lease (the shortest, and above 1.5 election
/// timeouts as the daemon requires) lasts 20 ticks, shorter than the simulator's
/// partitions (10 to 80 ticks): leases expire across leader changes, not only between.
pub const TICK_MS: u64 = 50;

/// Leases the clients hold at once, at most.
pub const MAX_LEASES: usize = 3;

/// One lease a client granted.
#[derive(Debug)]
struct Record {
    ttl_ticks: u64,
    /// The invoke tick of the latest acknowledged grant or keepalive: the lease must
    /// live at least until this + `ttl_ticks`.
    alive_from: Option<u64>,
    /// A node applied its revoke.
    revoked: bool,
    /// The client keeps it alive until this tick, then lets it expire.
    keep_until_tick: u64,
}

/// What the clients know of their leases.
#[derive(Debug, Default)]
pub struct Leases {
    records: HashMap<u64, Record>,
    next_id: u64,
    /// Acknowledged grants and keepalives.
    pub confirmed: u64,
    /// Revokes (expiries) checked.
    pub expired: u64,
}

impl Leases {
    /// A new lease id to grant, with its TTL in seconds, if fewer than `MAX_LEASES`
    /// are live.
    pub fn new_lease(&mut self, ttl_s: u64, keep_until_tick: u64) -> Option<u64> {
        if self.records.values().filter(|record| !record.revoked).count() >= MAX_LEASES {
            return None;
        }
        self.next_id += 1;
        let id = 0x1ea5_0000 + self.next_id;
        let ttl_ticks = ttl_s * 1000 / TICK_MS;
        self.records.insert(id, Record { ttl_ticks, alive_from: None, revoked: false, keep_until_tick });
        Some(id)
    }

    /// A live lease the client still keeps alive at `tick`, to keep alive or attach a
    /// key to, chosen by `pick` (an index).
    pub fn live(&self, tick: u64, pick: impl FnOnce(usize) -> usize) -> Option<u64> {
        let mut live: Vec<u64> = self
            .records
            .iter()
            .filter(|(_, record)| !record.revoked && record.keep_until_tick > tick)
            .map(|(id, _)| *id)
            .collect();
        live.sort_unstable();
        (!live.is_empty()).then(|| live[pick(live.len())])
    }

    /// A grant or keepalive of `id` invoked at `invoke_tick` was acknowledged.
    pub fn confirmed(&mut self, id: u64, invoke_tick: u64) {
        if let Some(record) = self.records.get_mut(&id) {
            self.confirmed += 1;
            record.alive_from = Some(record.alive_from.map_or(invoke_tick, |from| from.max(invoke_tick)));
        }
    }

    /// The first node applied the revoke of `id` at `tick`: an error naming the rule
    /// broken if that is before the lease's least lifetime.
    pub fn revoked(&mut self, id: u64, tick: u64) -> Result<(), String> {
        let Some(record) = self.records.get_mut(&id) else { return Ok(()) };
        record.revoked = true;
        self.expired += 1;
        match record.alive_from {
            Some(from) if tick < from + record.ttl_ticks => Err(format!(
                "lease {id:x} was revoked at tick {tick}, but a grant or keepalive invoked at tick {from} \
                 was acknowledged: it must live until tick {} ({} ticks of TTL)",
                from + record.ttl_ticks,
                record.ttl_ticks
            )),
            _ => Ok(()),
        }
    }
}
