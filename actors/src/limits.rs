//! Per-destination circuit breakers and rate limits, cluster-wide through Redis with a local fallback.
//!
//! The delivery scheduler asks [`Limits::admit`] (the circuit breaker) and [`Limits::take_tokens`] (the token
//! bucket) how many deliveries to one destination may start now; the deliverer reports each outcome, with the
//! attempt's duration, through [`Limits::record`]. Several hookgate processes sharing one Redis share one breaker
//! and one bucket per destination: every Redis-side operation is a single Lua script (EVALSHA) that reads the clock
//! with `redis.call('TIME')`, so all processes agree on time and no two of them can interleave a read-modify-write.
//!
//! The circuit's states (codes as stored, and as in the gauge `hookgate_circuit_state`):
//! - **closed** (0): everything is admitted; outcomes are counted (see below).
//! - **open** (1): nothing is admitted for the current open period. The first period after a full close lasts
//!   `open_initial_ms`; each re-open before the circuit is fully closed again doubles it, up to `open_secs`.
//! - **half-open** (2): the open period has passed; exactly one probe is admitted cluster-wide. Its success starts
//!   the ramp, its failure re-opens (with the doubled period).
//! - **ramping** (3): the circuit admits at most `allowance - outstanding grants` at a time. The allowance starts at
//!   `ramp_initial` and doubles each time as many successes as the allowance were recorded; once it reaches
//!   `ramp_max` the circuit is fully closed (and the back-off starts again from `open_initial_ms`). A counted
//!   failure (see the burst rule) sends the allowance back to `ramp_initial`; the open rules apply as when closed.
//!   This keeps a receiver that just recovered from getting `max_in_flight` new connections at once.
//!
//! Grants: every request admitted while half-open or ramping holds a grant, freed by its outcome (any recorded
//! outcome of an attempt started since the probe phase began frees the oldest grant), by [`Limits::release_grants`]
//! (admitted but not sent), or by expiry after `open_secs` (its node died), so a lost answer never stalls the ramp.
//!
//! Counting outcomes (closed and ramping):
//! - Consecutive rule, counting a synchronized burst once: a failure increments the consecutive count only if its
//!   attempt started (now − its elapsed time, on the same clock) at or after the moment the last *counted* failure
//!   was recorded. N requests in flight together that time out together at the same deadline count as one failure,
//!   not N; the next failure counts only for a request started after that. A success resets the count.
//! - Ratio rule: the tumbling window (it restarts `window_secs` after its first outcome) counts every outcome; the
//!   circuit opens when it holds >= `min_requests` with failed/total >= `failure_ratio`. Both rules are evaluated
//!   when a failure is recorded; a success never opens the circuit. `failure_threshold = 0` disables the
//!   consecutive rule; `failure_ratio > 1` disables the ratio rule. The counters survive the ramp's full close.
//! - Successes while closed are counted in bulk: while this process last saw a destination's circuit closed, its
//!   successes are held in memory and added to the window in one script per destination and flush
//!   ([`Limits::flush_held`]; the deliverer calls it every [`HELD_FLUSH_EVERY`]), or ahead of this process's next
//!   other outcome for the destination, in the same script (unless a flush already took them: then both scripts
//!   are on the wire at once, in either order). Held successes count only if the circuit is still closed when they
//!   arrive (they started while it was closed, so an open, half-open or ramping circuit would have ignored them
//!   anyway), and they reset the consecutive failures only if no failure was counted after the newest of them. To
//!   other processes a held success looks like an attempt that took up to `HELD_FLUSH_EVERY` longer.
//! - Admitting while closed: when the last answer this process heard about a destination's circuit (to an `admit`,
//!   a recorded outcome, a flush of held successes, a state read) said closed in Redis, and its question was asked
//!   within the last [`CLOSED_TRUSTED_FOR`] (or half the shortest open period, when that is shorter), `admit`
//!   answers without asking again. An answer to an earlier question handled after a later one's is ignored. While
//!   attempts succeed, each flush of held successes (every `HELD_FLUSH_EVERY`) answers the state anew, so an open
//!   by another process is seen here within a flush, and an open caused by this process's own failure at once (its
//!   record answers it); with no answer in between, when the trust ends. Until then this process may start what
//!   its slots allow, like the requests already in flight when a circuit opens: they start before its probe phase
//!   can begin (the trust lasts at most half an open period), so their outcomes are ignored. Half-open and ramping
//!   circuits are asked every time: their probe and grants are counted in Redis.
//! - Outcomes recorded while open are ignored (they belong to requests started before the circuit opened); so are,
//!   while half-open or ramping, outcomes of attempts started before the probe phase began. While half-open, the
//!   first other outcome decides (success starts the ramp, failure re-opens); hookgate only starts the probe then.
//! - [`Limits::state`] returns the stored state: an open circuit whose period has passed stays `Open` until a caller
//!   of [`Limits::admit`] takes the probe. [`Limits::health`] adds the allowance, grants and back-off.
//!
//! Keys (all with a PEXPIRE refreshed on every write, so an idle destination leaves nothing behind):
//! - `{prefix}:cb:{dest}` (hash): `state`, `consec` (counted consecutive failures), `lastfail` (ms the last counted
//!   failure was recorded), the window `wstart`/`wtotal`/`wfail`, `opened` (ms), `period` (ms of the current open
//!   period), `opens` (opens since the last full close: the back-off), `since` (ms the probe phase began), `allow`
//!   and `rsucc` (the ramp's allowance and the successes recorded at it), `gseq` (grant ids). A missing key is a
//!   closed circuit with clean counters. TTL: `2 * max(window_secs, open_secs) + 60` seconds.
//! - `{prefix}:cbg:{dest}` (sorted set): the outstanding grants, scored by the ms they were handed out.
//! - `{prefix}:rl:{dest}` (hash): `tokens` (fractional) and `ts` (ms of the last update). A missing key is a full
//!   bucket; the TTL is the time a bucket takes to refill completely (plus a second), after which it would be full.
//!
//! Metrics: gauge `hookgate_circuit_state{destination}` (the codes above, as last seen by this process) and counter
//! `hookgate_circuit_opens_total{destination}` (the label is the destination's id; destinations are declared by
//! the operator, so the label set is bounded).
//!
//! When the caller has no connection, or a script fails (error or `op_timeout`), the very same logic runs on
//! in-process state and the answer says [`Scope::Local`]: hookgate keeps protecting destinations, per process, while
//! Redis is away. Local state is not merged back; once Redis answers again the cluster state is used.
//!
//! Requires Redis >= 5 (scripts that write after `TIME` rely on effects replication; ZPOPMIN/ZPOPMAX).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookgate_core::internal_events::{emit, CircuitObserved, LimitsFellBack};
use hookgate_core::notification::{CircuitScope, Happening};
use redis::aio::MultiplexedConnection;
use redis::Script;
use uuid::Uuid;

use crate::notifier::Notices;

/// When the circuit of one destination opens, for how long, and how it closes again.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit (0 disables this rule). A burst of failures of requests that
    /// were in flight together counts once.
    pub failure_threshold: u32,
    /// Failed share of the window's outcomes that opens the circuit, once the window holds `min_requests`.
    pub failure_ratio: f64,
    /// Outcomes the window must hold before `failure_ratio` counts.
    pub min_requests: u32,
    /// Length of the (tumbling) window of the ratio rule.
    pub window_secs: u64,
    /// The longest open period (the back-off's cap); also how long a grant (the probe's, or one of the ramp's)
    /// may stay unanswered before it expires.
    pub open_secs: u64,
    /// The first open period after a full close, in milliseconds; each re-open before the next full close doubles
    /// it, up to `open_secs`.
    pub open_initial_ms: u64,
    /// Concurrency admitted right after a successful probe; it doubles each time as many successes were recorded.
    pub ramp_initial: u32,
    /// Allowance at which the ramping circuit counts as fully closed (`ramp_initial >= ramp_max`: no ramp, the
    /// probe's success closes the circuit at once).
    pub ramp_max: u32,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window_secs: 60,
            open_secs: 30,
            open_initial_ms: 1_000,
            ramp_initial: 2,
            ramp_max: 64,
        }
    }
}

/// A destination's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
    /// After a successful probe: admitting a limited, growing concurrency.
    Ramping,
}

impl CircuitState {
    fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::Ramping,
            _ => Self::Closed,
        }
    }

    /// The stored code: 0 closed, 1 open, 2 half-open, 3 ramping (also the value of `hookgate_circuit_state`).
    pub fn code(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::Ramping => 3,
        }
    }
}

/// A destination's circuit in detail (for the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitHealth {
    pub state: CircuitState,
    /// The ramp's current allowance (`Some` only while ramping).
    pub ramp_allowance: Option<u32>,
    /// Outstanding grants (requests admitted while half-open or ramping whose outcome is not recorded yet).
    pub grants: u32,
    /// Opens since the circuit was last fully closed (the exponential back-off's exponent + 1).
    pub opens: u32,
    /// The current (or last) open period in milliseconds; 0 when closed.
    pub open_period_ms: u64,
}

impl CircuitHealth {
    fn closed() -> Self {
        Self { state: CircuitState::Closed, ramp_allowance: None, grants: 0, opens: 0, open_period_ms: 0 }
    }
}

/// Where an answer came from: Redis (shared by every process) or this process's fallback state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Local,
}

/// The time source of the local fallback state (injectable so that tests need not sleep).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// [`Instant::now`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (for tests of the local fallback).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset_ms: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Self {
        Self { base: Instant::now(), offset_ms: AtomicU64::new(0) }
    }

    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// The circuit breaker's script arguments, derived once from [`CircuitConfig`] (times in milliseconds).
#[derive(Debug, Clone, Copy)]
struct Params {
    threshold: u32,
    ratio: f64,
    min_requests: u32,
    window_ms: i64,
    /// The cap of the open period, and the life of an unanswered grant.
    open_ms: i64,
    open_initial_ms: i64,
    ramp_initial: u32,
    ramp_max: u32,
    ttl_ms: i64,
}

impl Params {
    fn new(c: &CircuitConfig) -> Self {
        // Bounded so that every value stays exact as a Lua number (a double).
        let ms = |secs: u64| secs.min(1 << 32) as i64 * 1000;
        let ratio = if c.failure_ratio.is_nan() { 2.0 } else { c.failure_ratio.clamp(0.0, 2.0) };
        let window_ms = ms(c.window_secs);
        let open_ms = ms(c.open_secs);
        let ramp_initial = c.ramp_initial.clamp(1, 1 << 20);
        Self {
            threshold: c.failure_threshold,
            ratio,
            min_requests: c.min_requests,
            window_ms,
            open_ms,
            open_initial_ms: (c.open_initial_ms.min(1 << 42) as i64).min(open_ms),
            ramp_initial,
            ramp_max: c.ramp_max.min(1 << 20),
            ttl_ms: 2 * window_ms.max(open_ms) + 60_000,
        }
    }

    /// The open period after `opens` opens since the last full close (1 = the first).
    fn period(&self, opens: u32) -> i64 {
        let shift = opens.saturating_sub(1).min(40);
        self.open_initial_ms.saturating_mul(1 << shift).min(self.open_ms)
    }
}

/// Lua preamble: the Redis server's clock in milliseconds.
const NOW: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// Lua preamble of the circuit scripts: KEYS[1] circuit hash, KEYS[2] grants (sorted set); ARGV[1] ttl_ms,
/// ARGV[2] grant life (ms). `live_grants()` drops expired grants and counts the rest.
const CB_COMMON: &str = r#"
local key = KEYS[1]
local gkey = KEYS[2]
local ttl = ARGV[1]
local grant_ms = tonumber(ARGV[2])
local function live_grants()
  redis.call('ZREMRANGEBYSCORE', gkey, '-inf', string.format('%.0f', now - grant_ms))
  return redis.call('ZCARD', gkey)
end
local function keep()
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', gkey, ttl)
end
"#;

/// ARGV[3..]: want, ramp_initial. Returns {granted, state}.
const CB_ADMIT: &str = r#"
local want = tonumber(ARGV[3])
local h = redis.call('HMGET', key, 'state', 'opened', 'period', 'allow')
local state = tonumber(h[1]) or 0
if state == 0 then
  return {want, 0}
end
local allow
if state == 1 then
  local since = now - (tonumber(h[2]) or 0)
  if since >= 0 and since < (tonumber(h[3]) or grant_ms) then
    return {0, 1}
  end
  redis.call('DEL', gkey)
  state = 2
  redis.call('HSET', key, 'state', 2, 'since', string.format('%.0f', now))
  allow = 1
elseif state == 2 then
  allow = 1
else
  allow = tonumber(h[4]) or tonumber(ARGV[4])
end
local n = math.min(want, allow - live_grants())
if n <= 0 then
  return {0, state}
end
local last = redis.call('HINCRBY', key, 'gseq', n)
local args = {}
for i = last - n + 1, last do
  args[#args + 1] = string.format('%.0f', now)
  args[#args + 1] = i
end
redis.call('ZADD', gkey, unpack(args))
keep()
return {n, state}
"#;

/// ARGV[3]: n. Frees the newest n grants (admitted but not sent) while half-open or ramping.
const CB_RELEASE: &str = r#"
local state = redis.call('HGET', key, 'state')
if state == '2' or state == '3' then
  redis.call('ZPOPMAX', gkey, tonumber(ARGV[3]))
end
return 0
"#;

/// ARGV[3..]: success (1|0), elapsed_ms, failure_threshold, failure_ratio, min_requests, window_ms,
/// open_initial_ms, open_ms, ramp_initial, ramp_max, held (successes held before this outcome: counted first, and
/// only if the circuit is closed), held_age_ms (since the newest of them was recorded: as in `CB_SUCCESSES`, they
/// reset the consecutive failures only if no failure was counted after the newest of them). Returns {state after
/// recording, 0}, or, when this outcome changed the circuit, {1, 1, opened (ms), period (ms), opens} (it opened) or
/// {0, 2, opened (ms)} (it closed fully again; `opened` is the start of the last open period).
const CB_RECORD: &str = r#"
local ok = ARGV[3] == '1'
local started = now - tonumber(ARGV[4])
local threshold = tonumber(ARGV[5])
local ratio = tonumber(ARGV[6])
local min_requests = tonumber(ARGV[7])
local window_ms = tonumber(ARGV[8])
local open_initial = tonumber(ARGV[9])
local open_max = tonumber(ARGV[10])
local ramp_initial = tonumber(ARGV[11])
local ramp_max = tonumber(ARGV[12])
local held = tonumber(ARGV[13]) or 0
local held_newest = now - (tonumber(ARGV[14]) or 0)
local h = redis.call('HMGET', key, 'state', 'consec', 'lastfail', 'wstart', 'wtotal', 'wfail', 'opens', 'since',
  'allow', 'rsucc', 'opened')
local state = tonumber(h[1]) or 0
if state == 1 then
  return {1, 0}
end
local function open()
  local opens = (tonumber(h[7]) or 0) + 1
  local period = open_initial * math.pow(2, math.min(opens - 1, 40))
  if period > open_max then
    period = open_max
  end
  redis.call('DEL', key, gkey)
  redis.call('HSET', key, 'state', 1, 'opened', string.format('%.0f', now), 'period', string.format('%.0f', period),
    'opens', opens)
  redis.call('PEXPIRE', key, ttl)
  return {1, 1, now, period, opens}
end
local function fully_close()
  redis.call('DEL', gkey)
  redis.call('HDEL', key, 'opened', 'period', 'opens', 'since', 'allow', 'rsucc', 'gseq')
  redis.call('HSET', key, 'state', 0)
  redis.call('PEXPIRE', key, ttl)
  return {0, 2, tonumber(h[11]) or 0}
end
if state == 2 or state == 3 then
  if started < (tonumber(h[8]) or 0) then
    return {state, 0}
  end
  redis.call('ZPOPMIN', gkey, 1)
end
if state == 2 then
  if not ok then
    return open()
  end
  if ramp_initial >= ramp_max then
    return fully_close()
  end
  redis.call('HSET', key, 'state', 3, 'allow', ramp_initial, 'rsucc', 0)
  keep()
  return {3, 0}
end
local consec = tonumber(h[2]) or 0
local lastfail = tonumber(h[3])
local wstart = tonumber(h[4])
local wtotal = tonumber(h[5]) or 0
local wfail = tonumber(h[6]) or 0
local allow = tonumber(h[9]) or ramp_initial
local rsucc = tonumber(h[10]) or 0
if wstart == nil or now - wstart >= window_ms or now < wstart then
  wstart = now
  wtotal = 0
  wfail = 0
end
if state == 0 and held > 0 then
  if lastfail == nil or held_newest >= lastfail then
    consec = 0
  end
  wtotal = wtotal + held
end
wtotal = wtotal + 1
if ok then
  consec = 0
  if state == 3 then
    rsucc = rsucc + 1
    if rsucc >= allow then
      allow = allow * 2
      rsucc = 0
    end
  end
else
  wfail = wfail + 1
  local counted = lastfail == nil or started >= lastfail
  if counted then
    consec = consec + 1
    lastfail = now
  end
  if (threshold > 0 and consec >= threshold) or (wtotal >= min_requests and wfail / wtotal >= ratio) then
    return open()
  end
  if counted and state == 3 then
    allow = ramp_initial
    rsucc = 0
  end
end
redis.call('HSET', key, 'consec', consec, 'wstart', string.format('%.0f', wstart), 'wtotal', wtotal, 'wfail', wfail)
if lastfail ~= nil then
  redis.call('HSET', key, 'lastfail', string.format('%.0f', lastfail))
end
if state == 3 then
  if allow >= ramp_max then
    return fully_close()
  end
  redis.call('HSET', key, 'allow', allow, 'rsucc', rsucc)
  keep()
  return {3, 0}
end
redis.call('HSET', key, 'state', 0)
redis.call('PEXPIRE', key, ttl)
return {0, 0}
"#;

/// ARGV[3..]: n, window_ms, age_ms (since the newest of them was recorded). Adds n successes to a closed circuit's
/// window (as n successes recorded now would); they reset the consecutive failures unless a failure was counted
/// after the newest of them. Ignored in any other state. Returns the state.
const CB_SUCCESSES: &str = r#"
local n = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[4])
local newest = now - tonumber(ARGV[5])
local h = redis.call('HMGET', key, 'state', 'wstart', 'wtotal', 'lastfail')
local state = tonumber(h[1]) or 0
if state ~= 0 then
  return state
end
local lastfail = tonumber(h[4])
if lastfail == nil or newest >= lastfail then
  redis.call('HSET', key, 'consec', 0)
end
local wstart = tonumber(h[2])
if wstart == nil or now - wstart >= window_ms or now < wstart then
  redis.call('HSET', key, 'state', 0, 'wstart', string.format('%.0f', now), 'wtotal', n, 'wfail', 0)
else
  redis.call('HSET', key, 'state', 0, 'wtotal', (tonumber(h[3]) or 0) + n)
end
redis.call('PEXPIRE', key, ttl)
return 0
"#;

/// Returns {state, allowance (0 unless ramping), live grants, opens, period}.
const CB_HEALTH: &str = r#"
local h = redis.call('HMGET', key, 'state', 'allow', 'opens', 'period')
local state = tonumber(h[1]) or 0
local allow = 0
if state == 3 then
  allow = tonumber(h[2]) or 0
end
local grants = 0
if state == 2 or state == 3 then
  grants = redis.call('ZCOUNT', gkey, string.format('(%.0f', now - grant_ms), '+inf')
end
return {state, allow, grants, tonumber(h[3]) or 0, tonumber(h[4]) or 0}
"#;

/// Lua: refill the bucket in KEYS[1] (ARGV[1] = rate) up to `now`; leaves `tokens` (nil when the key is missing,
/// i.e. the bucket is full) and `burst`.
const RL_REFILL: &str = r#"
local rate = tonumber(ARGV[1])
local burst = math.max(1, rate)
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(h[1])
local ts = tonumber(h[2])
if tokens ~= nil and ts ~= nil then
  if now > ts then
    tokens = tokens + (now - ts) * rate / 1000
  end
  if tokens > burst then
    tokens = burst
  end
else
  tokens = nil
end
local function store(value)
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', value), 'ts', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
"#;

/// KEYS[1] bucket hash. ARGV: rate, want, ttl_ms. Returns the tokens granted.
const RL_TAKE: &str = r#"
if tokens == nil then
  tokens = burst
end
local granted = math.floor(tokens + 1e-9)
local want = tonumber(ARGV[2])
if granted > want then
  granted = want
end
if granted < 0 then
  granted = 0
end
tokens = tokens - granted
if tokens < 0 then
  tokens = 0
end
store(tokens)
return granted
"#;

/// KEYS[1] bucket hash. ARGV: rate, n, ttl_ms. Returns the whole tokens now in the bucket.
const RL_RETURN: &str = r#"
if tokens == nil then
  return math.floor(burst)
end
tokens = tokens + tonumber(ARGV[2])
if tokens > burst then
  tokens = burst
end
store(tokens)
return math.floor(tokens + 1e-9)
"#;

/// Whole tokens available in `tokens` (tolerating float error just below an integer).
fn whole(tokens: f64) -> u64 {
    (tokens + 1e-9).floor().max(0.0) as u64
}

/// Successes held for one destination: how many, and when the newest was recorded (local clock).
#[derive(Debug, Clone, Copy)]
struct Held {
    n: u32,
    newest: Instant,
}

impl Held {
    /// Milliseconds since the newest of them was recorded (the scripts' `age_ms`).
    fn age_ms(&self, now: Instant) -> u128 {
        now.saturating_duration_since(self.newest).as_millis().min(1 << 40)
    }
}

/// A destination's token bucket in the local fallback.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    ts: i64,
    expires: i64,
}

impl Bucket {
    /// The bucket refilled up to `now` (`None` when absent or expired: a full bucket).
    fn refilled(stored: Option<&Bucket>, rate: f64, now: i64) -> Option<f64> {
        let b = stored.filter(|b| b.expires > now)?;
        let burst = rate.max(1.0);
        let mut tokens = b.tokens;
        if now > b.ts {
            tokens += (now - b.ts) as f64 * rate / 1000.0;
        }
        Some(tokens.min(burst))
    }
}

/// A destination's circuit in the local fallback; absent (or expired) means closed with clean counters.
#[derive(Debug, Clone)]
struct Circuit {
    state: CircuitState,
    consec: u32,
    lastfail: Option<i64>,
    wstart: i64,
    wtotal: u32,
    wfail: u32,
    opened: i64,
    /// When it opened, on the wall clock (ms since the Unix epoch): the open period's identity in notifications.
    opened_unix_ms: i64,
    period: i64,
    opens: u32,
    since: i64,
    allow: u32,
    rsucc: u32,
    /// When each outstanding grant was handed out, oldest first.
    grants: VecDeque<i64>,
    expires: i64,
}

impl Circuit {
    fn closed() -> Self {
        Self {
            state: CircuitState::Closed,
            consec: 0,
            lastfail: None,
            wstart: i64::MIN,
            wtotal: 0,
            wfail: 0,
            opened: 0,
            opened_unix_ms: 0,
            period: 0,
            opens: 0,
            since: 0,
            allow: 0,
            rsucc: 0,
            grants: VecDeque::new(),
            expires: 0,
        }
    }

    /// A new open period, `opens` being the previous count of opens since the last full close.
    fn opened(now: i64, opens: u32, p: &Params) -> Self {
        let opens = opens.saturating_add(1);
        Self {
            state: CircuitState::Open,
            opened: now,
            opened_unix_ms: unix_ms(),
            period: p.period(opens),
            opens,
            expires: now + p.ttl_ms,
            ..Self::closed()
        }
    }

    /// Drops expired grants; returns how many are left.
    fn live_grants(&mut self, now: i64, p: &Params) -> u32 {
        while self.grants.front().is_some_and(|&g| g <= now - p.open_ms) {
            self.grants.pop_front();
        }
        self.grants.len() as u32
    }
}

/// One map of the local fallback, swept of expired entries now and then so that idle destinations vanish.
#[derive(Debug)]
struct LocalMap<T> {
    entries: HashMap<Uuid, T>,
    last_sweep: i64,
}

const SWEEP_EVERY_MS: i64 = 60_000;

impl<T> LocalMap<T> {
    fn new() -> Self {
        Self { entries: HashMap::new(), last_sweep: 0 }
    }

    fn sweep(&mut self, now: i64, expires: impl Fn(&T) -> i64) {
        if now - self.last_sweep >= SWEEP_EVERY_MS {
            self.last_sweep = now;
            self.entries.retain(|_, v| expires(v) > now);
        }
    }
}

struct Scripts {
    admit: Script,
    release: Script,
    record: Script,
    successes: Script,
    health: Script,
    take: Script,
    give_back: Script,
}

/// The last answer this process heard about a destination's circuit.
#[derive(Debug, Clone, Copy)]
struct Sight {
    /// Closed, in Redis (an answer of the local fallback, or any other state, is not).
    closed: bool,
    /// When the question it answered was asked.
    asked_at: Instant,
}

/// Circuit breakers and token buckets of every destination. Cheap to share behind an `Arc`.
pub struct Limits {
    prefix: String,
    circuit: CircuitConfig,
    params: Params,
    op_timeout: Duration,
    clock: Arc<dyn Clock>,
    epoch: Instant,
    circuits: Mutex<LocalMap<Circuit>>,
    buckets: Mutex<LocalMap<Bucket>>,
    scripts: Scripts,
    /// Whether the last Redis attempt failed (to log transitions, not every call).
    degraded: AtomicBool,
    /// Destinations whose last `admit` here answered half-open or ramping: only those can have grants to release,
    /// so releasing skips Redis for the others (the claim round releases after every round with unused budget).
    probing: Mutex<std::collections::HashSet<Uuid>>,
    /// What this process last heard of each destination's circuit (see [`Sight`]): while it was closed in Redis,
    /// successes are held and counted in bulk, and for [`Limits::trust`] after the question `admit` answers without
    /// asking Redis.
    sights: Mutex<HashMap<Uuid, Sight>>,
    /// How long a sight of a closed circuit is trusted: [`CLOSED_TRUSTED_FOR`], or half the shortest open period
    /// when that is shorter, so that a trusted sight never outlives an open period begun after it.
    trust: Duration,
    /// Successes held per destination, not yet added to its window (see the module notes).
    held: Mutex<HashMap<Uuid, Held>>,
    /// Where opens and returns to closed are told (operational notifications); off unless set.
    notices: Notices,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("prefix", &self.prefix)
            .field("circuit", &self.circuit)
            .field("op_timeout", &self.op_timeout)
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How often the deliverer adds held successes to their circuits' windows ([`Limits::flush_held`]).
pub const HELD_FLUSH_EVERY: Duration = Duration::from_millis(20);

/// How long a circuit this process saw closed in Redis admits without asking Redis again, at most (see the module
/// notes; half the shortest open period when that is shorter).
pub const CLOSED_TRUSTED_FOR: Duration = Duration::from_millis(100);

/// Default longest wait for one Redis script before the local fallback answers.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);

impl Limits {
    pub fn new(key_prefix: &str, circuit: CircuitConfig) -> Self {
        Self::with_clock(key_prefix, circuit, Arc::new(SystemClock))
    }

    /// Like [`Limits::new`], with the clock of the local fallback state (Redis always uses its own clock).
    pub fn with_clock(key_prefix: &str, circuit: CircuitConfig, clock: Arc<dyn Clock>) -> Self {
        let epoch = clock.now();
        let params = Params::new(&circuit);
        Self {
            prefix: key_prefix.to_owned(),
            circuit,
            params,
            op_timeout: DEFAULT_OP_TIMEOUT,
            clock,
            epoch,
            circuits: Mutex::new(LocalMap::new()),
            buckets: Mutex::new(LocalMap::new()),
            scripts: Scripts {
                admit: Script::new(&format!("{NOW}{CB_COMMON}{CB_ADMIT}")),
                release: Script::new(&format!("{NOW}{CB_COMMON}{CB_RELEASE}")),
                record: Script::new(&format!("{NOW}{CB_COMMON}{CB_RECORD}")),
                successes: Script::new(&format!("{NOW}{CB_COMMON}{CB_SUCCESSES}")),
                health: Script::new(&format!("{NOW}{CB_COMMON}{CB_HEALTH}")),
                take: Script::new(&format!("{NOW}{RL_REFILL}{RL_TAKE}")),
                give_back: Script::new(&format!("{NOW}{RL_REFILL}{RL_RETURN}")),
            },
            degraded: AtomicBool::new(false),
            probing: Mutex::new(std::collections::HashSet::new()),
            sights: Mutex::new(HashMap::new()),
            trust: CLOSED_TRUSTED_FOR.min(Duration::from_millis(params.open_initial_ms.max(0) as u64 / 2)),
            held: Mutex::new(HashMap::new()),
            notices: Notices::off(),
        }
    }

    /// Tells `notices` each time a circuit opens or closes fully again (operational notifications).
    pub fn with_notices(mut self, notices: Notices) -> Self {
        self.notices = notices;
        self
    }

    /// Sets the longest wait for one Redis script; past it the local fallback answers.
    pub fn with_op_timeout(mut self, op_timeout: Duration) -> Self {
        self.op_timeout = op_timeout;
        self
    }

    pub fn circuit_config(&self) -> &CircuitConfig {
        &self.circuit
    }

    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of `dest`'s circuit.
    pub fn circuit_key(&self, dest: Uuid) -> String {
        format!("{}:cb:{}", self.prefix, dest)
    }

    /// The Redis key of `dest`'s outstanding grants (half-open and ramping).
    pub fn grants_key(&self, dest: Uuid) -> String {
        format!("{}:cbg:{}", self.prefix, dest)
    }

    /// The Redis key of `dest`'s token bucket.
    pub fn bucket_key(&self, dest: Uuid) -> String {
        format!("{}:rl:{}", self.prefix, dest)
    }

    /// Token bucket per destination: refills at `rate` tokens/s up to a burst of max(1, rate) tokens; takes up to
    /// `want`, returns how many were granted (0..=want).
    ///
    /// A `rate` that is not positive (or NaN) grants nothing; an infinite `rate` grants `want` without state.
    pub async fn take_tokens(
        &self,
        conn: Option<MultiplexedConnection>,
        dest: Uuid,
        rate: f64,
        want: u32,
    ) -> (u32, Scope) {
        let scope = if conn.is_some() { Scope::Cluster } else { Scope::Local };
        if want == 0 || rate.is_nan() || rate <= 0.0 {
            return (0, scope);
        }
        if rate.is_infinite() {
            return (want, scope);
        }
        let args = [rate.to_string(), want.to_string(), bucket_ttl_ms(rate).to_string()];
        if let Some(granted) =
            self.eval::<i64>(conn, "take_tokens", &self.scripts.take, &[self.bucket_key(dest)], &args).await
        {
            return (granted.clamp(0, want as i64) as u32, Scope::Cluster);
        }
        let now = self.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.sweep(now, |b| b.expires);
        let tokens = Bucket::refilled(buckets.entries.get(&dest), rate, now).unwrap_or(rate.max(1.0));
        let granted = whole(tokens).min(want as u64) as u32;
        let left = (tokens - granted as f64).max(0.0);
        buckets.entries.insert(dest, Bucket { tokens: left, ts: now, expires: now + bucket_ttl_ms(rate) });
        (granted, Scope::Local)
    }

    /// Gives back tokens taken but not used (never above the burst).
    pub async fn return_tokens(&self, conn: Option<MultiplexedConnection>, dest: Uuid, rate: f64, n: u32) {
        if n == 0 || rate.is_nan() || rate <= 0.0 || rate.is_infinite() {
            return;
        }
        let args = [rate.to_string(), n.to_string(), bucket_ttl_ms(rate).to_string()];
        if self
            .eval::<i64>(conn, "return_tokens", &self.scripts.give_back, &[self.bucket_key(dest)], &args)
            .await
            .is_some()
        {
            return;
        }
        let now = self.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Absent means full: nothing to give back to.
        if let Some(tokens) = Bucket::refilled(buckets.entries.get(&dest), rate, now) {
            let tokens = (tokens + n as f64).min(rate.max(1.0));
            buckets.entries.insert(dest, Bucket { tokens, ts: now, expires: now + bucket_ttl_ms(rate) });
        }
    }

    /// Both Redis keys of `dest`'s circuit, as its scripts take them.
    fn circuit_keys(&self, dest: Uuid) -> [String; 2] {
        [self.circuit_key(dest), self.grants_key(dest)]
    }

    /// How many requests may start now: `want` when closed; 0 while open; when half-open exactly one probe
    /// cluster-wide (the first caller after the open period gets 1 and the state becomes half-open with a probe in
    /// flight; others get 0 until that probe's outcome is recorded, it is released, or it expires after
    /// `open_secs`); when ramping at most the allowance minus the outstanding grants. Every request admitted while
    /// half-open or ramping holds a grant until its outcome is recorded (or [`Limits::release_grants`]). A circuit
    /// this process saw closed in Redis recently enough (see the module notes) is answered without asking.
    pub async fn admit(&self, conn: Option<MultiplexedConnection>, dest: Uuid, want: u32) -> (u32, Scope) {
        if want == 0 {
            return (0, if conn.is_some() { Scope::Cluster } else { Scope::Local });
        }
        if conn.is_some() && self.trusts_closed(dest) {
            return (want, Scope::Cluster);
        }
        let asked_at = self.clock.now();
        let p = self.params;
        let args = [p.ttl_ms.to_string(), p.open_ms.to_string(), want.to_string(), p.ramp_initial.to_string()];
        let (n, state, scope) =
            match self.eval::<Vec<i64>>(conn, "admit", &self.scripts.admit, &self.circuit_keys(dest), &args).await {
                Some(v) => (
                    v.first().copied().unwrap_or(0).clamp(0, want as i64) as u32,
                    CircuitState::from_code(v.get(1).copied().unwrap_or(0)),
                    Scope::Cluster,
                ),
                None => {
                    let (n, state) = self.admit_local(dest, want);
                    (n, state, Scope::Local)
                }
            };
        self.observe(dest, state, Change::None, scope, asked_at);
        let mut probing = self.probing.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(state, CircuitState::HalfOpen | CircuitState::Ramping) {
            probing.insert(dest);
        } else {
            probing.remove(&dest);
        }
        (n, scope)
    }

    /// Whether the last answer this process heard about `dest`'s circuit said closed in Redis, to a question asked
    /// within the last [`Limits::trust`] (on its own clock: a test's manual clock moves it).
    fn trusts_closed(&self, dest: Uuid) -> bool {
        let sight = self.sights.lock().unwrap_or_else(|e| e.into_inner()).get(&dest).copied();
        sight.is_some_and(|s| s.closed && self.clock.now().saturating_duration_since(s.asked_at) < self.trust)
    }

    /// Whether the last answer this process heard about `dest`'s circuit said closed in Redis.
    fn saw_closed(&self, dest: Uuid) -> bool {
        self.sights.lock().unwrap_or_else(|e| e.into_inner()).get(&dest).is_some_and(|s| s.closed)
    }

    fn admit_local(&self, dest: Uuid, want: u32) -> (u32, CircuitState) {
        let p = self.params;
        let now = self.now_ms();
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.sweep(now, |c| c.expires);
        let Some(c) = circuits.entries.get_mut(&dest).filter(|c| c.expires > now) else {
            return (want, CircuitState::Closed);
        };
        let allow = match c.state {
            CircuitState::Closed => return (want, CircuitState::Closed),
            CircuitState::Open => {
                if (0..c.period).contains(&(now - c.opened)) {
                    return (0, CircuitState::Open);
                }
                c.state = CircuitState::HalfOpen;
                c.since = now;
                c.grants.clear();
                1
            }
            CircuitState::HalfOpen => 1,
            CircuitState::Ramping => c.allow,
        };
        let n = allow.saturating_sub(c.live_grants(now, &p)).min(want);
        if n > 0 {
            c.grants.extend(std::iter::repeat_n(now, n as usize));
            c.expires = now + p.ttl_ms;
        }
        (n, c.state)
    }

    /// Gives back `n` grants that `admit` handed out while half-open or ramping but that were not used (nothing was
    /// sent), so that the next round may use them at once. Does nothing in other states (nor when this process's
    /// last `admit` for `dest` answered closed or open: then it handed out no grants).
    pub async fn release_grants(&self, conn: Option<MultiplexedConnection>, dest: Uuid, n: u32) {
        if n == 0 || !self.probing.lock().unwrap_or_else(|e| e.into_inner()).contains(&dest) {
            return;
        }
        let p = self.params;
        let args = [p.ttl_ms.to_string(), p.open_ms.to_string(), n.to_string()];
        if self
            .eval::<i64>(conn, "release_grants", &self.scripts.release, &self.circuit_keys(dest), &args)
            .await
            .is_some()
        {
            return;
        }
        let now = self.now_ms();
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = circuits
            .entries
            .get_mut(&dest)
            .filter(|c| c.expires > now && matches!(c.state, CircuitState::HalfOpen | CircuitState::Ramping))
        {
            for _ in 0..n {
                c.grants.pop_back();
            }
        }
    }

    /// Gives back a half-open probe slot that `admit` handed out but that was not used (`release_grants(.., 1)`).
    pub async fn release_probe(&self, conn: Option<MultiplexedConnection>, dest: Uuid) {
        self.release_grants(conn, dest, 1).await
    }

    /// Records one outcome of an attempt that took `elapsed` (it started `elapsed` before now). Returns the state
    /// after recording.
    ///
    /// Closed or ramping: success resets consecutive failures; a failure counts as consecutive only if its attempt
    /// started at or after the last counted failure was recorded (a synchronized burst counts once); the circuit
    /// opens when counted consecutive failures >= failure_threshold, or when the window holds >= min_requests with
    /// failed/total >= failure_ratio. Ramping: successes grow the allowance (fully closed at `ramp_max`), a counted
    /// failure sends it back to `ramp_initial`. Half-open: success starts the ramp, failure re-opens. Open: ignored;
    /// half-open and ramping also ignore attempts started before the probe phase began.
    pub async fn record(
        &self,
        conn: Option<MultiplexedConnection>,
        dest: Uuid,
        success: bool,
        elapsed: Duration,
    ) -> (CircuitState, Scope) {
        if success && conn.is_some() && self.saw_closed(dest) {
            let now = self.clock.now();
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let h = held.entry(dest).or_insert(Held { n: 0, newest: now });
            h.n = h.n.saturating_add(1);
            h.newest = now;
            return (CircuitState::Closed, Scope::Cluster);
        }
        let asked_at = self.clock.now();
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&dest);
        let held_age_ms = held.map_or(0, |h| h.age_ms(self.clock.now()));
        let held = held.map_or(0, |h| h.n);
        let p = self.params;
        let elapsed_ms = elapsed.as_millis().min(1 << 40) as i64;
        let args = [
            p.ttl_ms.to_string(),
            p.open_ms.to_string(),
            if success { "1" } else { "0" }.to_owned(),
            elapsed_ms.to_string(),
            p.threshold.to_string(),
            p.ratio.to_string(),
            p.min_requests.to_string(),
            p.window_ms.to_string(),
            p.open_initial_ms.to_string(),
            p.open_ms.to_string(),
            p.ramp_initial.to_string(),
            p.ramp_max.to_string(),
            held.to_string(),
            held_age_ms.to_string(),
        ];
        let (state, change, scope) = match self
            .eval::<Vec<i64>>(conn, "record", &self.scripts.record, &self.circuit_keys(dest), &args)
            .await
        {
            Some(v) => {
                let at = |i: usize| v.get(i).copied().unwrap_or(0);
                let change = match at(1) {
                    1 => {
                        Change::Opened { at_ms: at(2), period_ms: at(3), opens: at(4).clamp(0, u32::MAX as i64) as u32 }
                    }
                    2 => Change::Closed { opened_at_ms: at(2) },
                    _ => Change::None,
                };
                (CircuitState::from_code(at(0)), change, Scope::Cluster)
            }
            None => {
                if held > 0 {
                    let (_, earlier) = self.record_local_successes(dest, held);
                    if earlier != Change::None {
                        self.observe(dest, CircuitState::Closed, earlier, Scope::Local, asked_at);
                    }
                }
                let (state, change) = self.record_local(dest, success, elapsed_ms);
                (state, change, Scope::Local)
            }
        };
        self.observe(dest, state, change, scope, asked_at);
        (state, scope)
    }

    /// Whether successes are held, waiting for [`Limits::flush_held`].
    pub fn holds_successes(&self) -> bool {
        !self.held.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Adds the held successes to their circuits' windows: one script per destination (see the module notes).
    pub async fn flush_held(&self, conn: Option<MultiplexedConnection>) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        // One script per destination, all on the wire at once (the connection pipelines them).
        futures::future::join_all(held.into_iter().map(|(dest, h)| self.flush_one(conn.clone(), dest, h))).await;
    }

    /// Adds one destination's held successes to its window (the local fallback's when Redis does not answer).
    async fn flush_one(&self, conn: Option<MultiplexedConnection>, dest: Uuid, held: Held) {
        let (p, n) = (self.params, held.n);
        let age_ms = held.age_ms(self.clock.now());
        let args =
            [p.ttl_ms.to_string(), p.open_ms.to_string(), n.to_string(), p.window_ms.to_string(), age_ms.to_string()];
        let keys = self.circuit_keys(dest);
        let asked_at = self.clock.now();
        let (state, change, scope) = match self.eval::<i64>(conn, "record", &self.scripts.successes, &keys, &args).await
        {
            Some(code) => (CircuitState::from_code(code), Change::None, Scope::Cluster),
            None => {
                let (state, change) = self.record_local_successes(dest, n);
                (state, change, Scope::Local)
            }
        };
        self.observe(dest, state, change, scope, asked_at);
    }

    /// Held successes that could not reach Redis go to the local fallback state, one by one: the state after the
    /// last, and the change they made (if any).
    fn record_local_successes(&self, dest: Uuid, n: u32) -> (CircuitState, Change) {
        let mut last = (CircuitState::Closed, Change::None);
        for _ in 0..n {
            let (state, change) = self.record_local(dest, true, 0);
            last = (state, if change == Change::None { last.1 } else { change });
        }
        last
    }

    /// The local fallback of [`Limits::record`]: the state after recording, and how this outcome changed it (the
    /// times on the wall clock, in ms since the Unix epoch).
    fn record_local(&self, dest: Uuid, success: bool, elapsed_ms: i64) -> (CircuitState, Change) {
        let p = self.params;
        let now = self.now_ms();
        let started = now - elapsed_ms;
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.sweep(now, |c| c.expires);
        let mut c = circuits.entries.get(&dest).filter(|c| c.expires > now).cloned().unwrap_or_else(Circuit::closed);
        match c.state {
            CircuitState::Open => return (CircuitState::Open, Change::None),
            CircuitState::HalfOpen | CircuitState::Ramping => {
                if started < c.since {
                    return (c.state, Change::None);
                }
                c.grants.pop_front();
            }
            CircuitState::Closed => {}
        }
        let open = |circuits: &mut LocalMap<Circuit>, opens: u32| {
            let opened = Circuit::opened(now, opens, &p);
            let change = Change::Opened { at_ms: opened.opened_unix_ms, period_ms: opened.period, opens: opened.opens };
            circuits.entries.insert(dest, opened);
            (CircuitState::Open, change)
        };
        if c.state == CircuitState::HalfOpen {
            if !success {
                return open(&mut circuits, c.opens);
            }
            let mut change = Change::None;
            if p.ramp_initial >= p.ramp_max {
                change = Change::Closed { opened_at_ms: c.opened_unix_ms };
                c = Circuit::closed();
            } else {
                c.state = CircuitState::Ramping;
                c.allow = p.ramp_initial;
                c.rsucc = 0;
            }
            c.expires = now + p.ttl_ms;
            let state = c.state;
            circuits.entries.insert(dest, c);
            return (state, change);
        }
        if !(0..p.window_ms).contains(&(now.saturating_sub(c.wstart))) {
            c.wstart = now;
            c.wtotal = 0;
            c.wfail = 0;
        }
        c.wtotal += 1;
        let ramping = c.state == CircuitState::Ramping;
        if success {
            c.consec = 0;
            if ramping {
                c.rsucc += 1;
                if c.rsucc >= c.allow {
                    c.allow = c.allow.saturating_mul(2);
                    c.rsucc = 0;
                }
            }
        } else {
            c.wfail += 1;
            let counted = c.lastfail.is_none_or(|last| started >= last);
            if counted {
                c.consec += 1;
                c.lastfail = Some(now);
            }
            let consecutive = p.threshold > 0 && c.consec >= p.threshold;
            let ratio = c.wtotal >= p.min_requests && c.wfail as f64 / c.wtotal as f64 >= p.ratio;
            if consecutive || ratio {
                return open(&mut circuits, c.opens);
            }
            if counted && ramping {
                c.allow = p.ramp_initial;
                c.rsucc = 0;
            }
        }
        let mut change = Change::None;
        if ramping && c.allow >= p.ramp_max {
            // Fully closed: the back-off starts over; the failure counters carry on.
            change = Change::Closed { opened_at_ms: c.opened_unix_ms };
            c = Circuit {
                consec: c.consec,
                lastfail: c.lastfail,
                wstart: c.wstart,
                wtotal: c.wtotal,
                wfail: c.wfail,
                ..Circuit::closed()
            };
        }
        c.expires = now + p.ttl_ms;
        let state = c.state;
        circuits.entries.insert(dest, c);
        (state, change)
    }

    /// The stored state of `dest`'s circuit (see the module notes on `Open` past its open period).
    pub async fn state(&self, conn: Option<MultiplexedConnection>, dest: Uuid) -> (CircuitState, Scope) {
        let (health, scope) = self.health(conn, dest).await;
        (health.state, scope)
    }

    /// The stored state of `dest`'s circuit with its ramp allowance, outstanding grants and back-off.
    pub async fn health(&self, conn: Option<MultiplexedConnection>, dest: Uuid) -> (CircuitHealth, Scope) {
        let p = self.params;
        let args = [p.ttl_ms.to_string(), p.open_ms.to_string()];
        let asked_at = self.clock.now();
        if let Some(v) =
            self.eval::<Vec<i64>>(conn, "state", &self.scripts.health, &self.circuit_keys(dest), &args).await
        {
            let at = |i: usize| v.get(i).copied().unwrap_or(0).clamp(0, u32::MAX as i64);
            let state = CircuitState::from_code(at(0));
            let health = CircuitHealth {
                state,
                ramp_allowance: (state == CircuitState::Ramping).then_some(at(1) as u32),
                grants: at(2) as u32,
                opens: at(3) as u32,
                open_period_ms: v.get(4).copied().unwrap_or(0).max(0) as u64,
            };
            self.note_sight(dest, state == CircuitState::Closed, asked_at);
            return (health, Scope::Cluster);
        }
        let now = self.now_ms();
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let health = circuits.entries.get(&dest).filter(|c| c.expires > now).map_or(CircuitHealth::closed(), |c| {
            let probing = matches!(c.state, CircuitState::HalfOpen | CircuitState::Ramping);
            CircuitHealth {
                state: c.state,
                ramp_allowance: (c.state == CircuitState::Ramping).then_some(c.allow),
                grants: if probing { c.grants.iter().filter(|&&g| g > now - p.open_ms).count() as u32 } else { 0 },
                opens: c.opens,
                open_period_ms: c.period.max(0) as u64,
            }
        });
        (health, Scope::Local)
    }

    /// Runs one script; `None` (after logging a transition to degraded) when there is no connection or it fails.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        conn: Option<MultiplexedConnection>,
        op: &'static str,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Option<T> {
        let mut conn = conn?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let outcome = tokio::time::timeout(self.op_timeout, invocation.invoke_async::<T>(&mut conn)).await;
        let error = match outcome {
            Ok(Ok(value)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(message = "Redis answers again; circuit breakers and rate limits are cluster-wide.");
                }
                return Some(value);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", self.op_timeout),
        };
        let first = !self.degraded.swap(true, Ordering::Relaxed);
        emit(LimitsFellBack { op, error: &error, first });
        None
    }

    /// Milliseconds of the local clock since this `Limits` was created.
    fn now_ms(&self) -> i64 {
        self.clock.now().saturating_duration_since(self.epoch).as_millis() as i64
    }
}

/// Publishes the state of `dest`'s circuit as this process last saw it (and that it has just opened).
/// How one recorded outcome changed a circuit (times in ms since the Unix epoch, on the breaker's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    /// It opened, for `period_ms`; `opens` since it was last fully closed.
    Opened {
        at_ms: i64,
        period_ms: i64,
        opens: u32,
    },
    /// It closed fully again; its last open period began at `opened_at_ms`.
    Closed {
        opened_at_ms: i64,
    },
}

impl Limits {
    /// Keeps what an answer to a question asked at `asked_at` said (closed in Redis or not), unless an answer to a
    /// later question was heard first: answers handled out of order never bring back a closed circuit's trust.
    fn note_sight(&self, dest: Uuid, closed: bool, asked_at: Instant) {
        let mut sights = self.sights.lock().unwrap_or_else(|e| e.into_inner());
        if sights.get(&dest).is_some_and(|s| s.asked_at > asked_at) {
            return;
        }
        sights.insert(dest, Sight { closed, asked_at });
        drop(sights);
        if closed {
            // A closed circuit holds no grants: none to release.
            self.probing.lock().unwrap_or_else(|e| e.into_inner()).remove(&dest);
        }
    }

    /// Reports the state this process saw in answer to a question asked at `asked_at` (the sight, the gauge, the
    /// opens counter), and tells the Notifier of an open or a return to closed.
    fn observe(&self, dest: Uuid, state: CircuitState, change: Change, scope: Scope, asked_at: Instant) {
        self.note_sight(dest, scope == Scope::Cluster && state == CircuitState::Closed, asked_at);
        emit(CircuitObserved {
            destination: dest,
            code: state.code(),
            opened: matches!(change, Change::Opened { .. }),
        });
        let scope = match scope {
            Scope::Cluster => CircuitScope::Cluster,
            Scope::Local => CircuitScope::Local,
        };
        match change {
            Change::None => {}
            Change::Opened { at_ms, period_ms, opens } => self.notices.send(Happening::CircuitOpened {
                destination: dest,
                opened_at_ms: at_ms,
                open_period_ms: period_ms.max(0) as u64,
                opens,
                scope,
            }),
            Change::Closed { opened_at_ms } => {
                self.notices.send(Happening::CircuitClosed { destination: dest, opened_at_ms, scope })
            }
        }
    }
}

/// Now on the wall clock, in ms since the Unix epoch.
fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How long a bucket of `rate` takes to refill from empty, plus a second: after that it is full, so it may vanish.
fn bucket_ttl_ms(rate: f64) -> i64 {
    let burst = rate.max(1.0);
    ((burst / rate * 1000.0).ceil() as i64).saturating_add(1000).min(1 << 42)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic breaker (no ramp, a constant 1 s open period): the tests written before the ramp, the burst
    /// rule and the back-off use it, since those did not change it.
    fn config() -> CircuitConfig {
        CircuitConfig {
            failure_threshold: 3,
            failure_ratio: 0.5,
            min_requests: 10,
            window_secs: 60,
            open_secs: 1,
            open_initial_ms: 1_000,
            ramp_initial: 1,
            ramp_max: 1,
        }
    }

    fn ratio_config() -> CircuitConfig {
        CircuitConfig { failure_threshold: 0, open_secs: 30, ..config() }
    }

    fn local(config: CircuitConfig) -> (Limits, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (Limits::with_clock("unused", config, clock.clone()), clock)
    }

    // ---- local fallback (conn = None, manual clock) ----

    #[tokio::test]
    async fn limits_local_threshold_opens_and_probe_success_closes() {
        let (l, clock) = local(config());
        let dest = Uuid::new_v4();
        assert_eq!(l.admit(None, dest, 4).await, (4, Scope::Local));
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Local));
        // A success resets the consecutive count.
        assert_eq!(l.record(None, dest, true, Duration::ZERO).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Local));
        assert_eq!(l.state(None, dest).await, (CircuitState::Open, Scope::Local));
        assert_eq!(l.admit(None, dest, 4).await, (0, Scope::Local));
        // Late outcomes while open change nothing.
        assert_eq!(l.record(None, dest, true, Duration::ZERO).await, (CircuitState::Open, Scope::Local));

        clock.advance(Duration::from_millis(999));
        assert_eq!(l.admit(None, dest, 4).await, (0, Scope::Local));
        clock.advance(Duration::from_millis(1));
        let (a, b) = tokio::join!(l.admit(None, dest, 4), l.admit(None, dest, 4));
        assert_eq!((a.0 + b.0, a.1, b.1), (1, Scope::Local, Scope::Local));
        assert_eq!(l.state(None, dest).await.0, CircuitState::HalfOpen);
        assert_eq!(l.admit(None, dest, 4).await.0, 0);

        assert_eq!(l.record(None, dest, true, Duration::ZERO).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.admit(None, dest, 4).await, (4, Scope::Local));
        // Counters were reset: it takes the full threshold again.
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await.0, CircuitState::Closed);
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await.0, CircuitState::Closed);
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await.0, CircuitState::Open);
    }

    #[tokio::test]
    async fn an_open_and_the_return_to_closed_are_reported_once_naming_the_same_open_period() {
        let (l, clock) = local(config());
        let dest = Uuid::new_v4();
        assert_eq!(l.record_local(dest, false, 0), (CircuitState::Closed, Change::None));
        assert_eq!(l.record_local(dest, false, 0), (CircuitState::Closed, Change::None));
        let (state, opened) = l.record_local(dest, false, 0);
        assert_eq!(state, CircuitState::Open);
        let Change::Opened { at_ms, period_ms, opens } = opened else { panic!("{opened:?}") };
        assert_eq!((period_ms, opens), (1_000, 1));
        assert_eq!(l.record_local(dest, false, 0), (CircuitState::Open, Change::None), "reported once");
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.admit(None, dest, 1).await.0, 1, "the probe");
        let (state, closed) = l.record_local(dest, true, 0);
        assert_eq!(state, CircuitState::Closed);
        assert_eq!(closed, Change::Closed { opened_at_ms: at_ms }, "the close names its open period");
        assert_eq!(l.record_local(dest, true, 0), (CircuitState::Closed, Change::None));
    }

    #[tokio::test]
    async fn limits_local_probe_failure_reopens_and_probe_slot_expires() {
        let (l, clock) = local(config());
        let dest = Uuid::new_v4();
        for _ in 0..3 {
            l.record(None, dest, false, Duration::ZERO).await;
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.admit(None, dest, 2).await.0, 1);
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Local));
        // A new open period.
        assert_eq!(l.admit(None, dest, 2).await.0, 0);
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.admit(None, dest, 2).await.0, 0);
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.admit(None, dest, 2).await.0, 1);
        // The probe never reports: its slot expires after open_secs and another probe may go.
        clock.advance(Duration::from_millis(999));
        assert_eq!(l.admit(None, dest, 2).await.0, 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.admit(None, dest, 2).await.0, 1);
        assert_eq!(l.admit(None, dest, 2).await.0, 0);
    }

    #[tokio::test]
    async fn limits_local_ratio_rule_needs_min_requests() {
        let (l, clock) = local(ratio_config());
        let dest = Uuid::new_v4();
        // 9 outcomes, 5 failed: over the ratio but under min_requests.
        for i in 0..9 {
            assert_eq!(l.record(None, dest, i % 2 == 1, Duration::ZERO).await.0, CircuitState::Closed);
        }
        // 10th: a success never opens (5/10 failed).
        assert_eq!(l.record(None, dest, true, Duration::ZERO).await.0, CircuitState::Closed);
        // 11th: failure, 6/11 >= 0.5.
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await.0, CircuitState::Open);

        // The window is tumbling: failures older than window_secs are forgotten.
        let dest = Uuid::new_v4();
        for _ in 0..9 {
            l.record(None, dest, false, Duration::ZERO).await;
        }
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await.0, CircuitState::Closed);

        // Below the ratio it stays closed.
        let dest = Uuid::new_v4();
        for i in 0..30 {
            assert_eq!(l.record(None, dest, i % 3 != 0, Duration::ZERO).await.0, CircuitState::Closed);
        }
    }

    #[tokio::test]
    async fn limits_local_token_bucket_bursts_and_refills() {
        let (l, clock) = local(config());
        let dest = Uuid::new_v4();
        assert_eq!(l.take_tokens(None, dest, 5.0, 10).await, (5, Scope::Local));
        assert_eq!(l.take_tokens(None, dest, 5.0, 10).await, (0, Scope::Local));
        clock.advance(Duration::from_millis(199));
        assert_eq!(l.take_tokens(None, dest, 5.0, 10).await.0, 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.take_tokens(None, dest, 5.0, 10).await.0, 1);
        clock.advance(Duration::from_secs(10));
        assert_eq!(l.take_tokens(None, dest, 5.0, 10).await.0, 5);
        // Given back, never above the burst.
        l.return_tokens(None, dest, 5.0, 3).await;
        assert_eq!(l.take_tokens(None, dest, 5.0, 2).await.0, 2);
        l.return_tokens(None, dest, 5.0, 100).await;
        assert_eq!(l.take_tokens(None, dest, 5.0, 100).await.0, 5);

        // A slow rate still has a burst of one.
        let slow = Uuid::new_v4();
        assert_eq!(l.take_tokens(None, slow, 0.5, 3).await.0, 1);
        assert_eq!(l.take_tokens(None, slow, 0.5, 3).await.0, 0);
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.take_tokens(None, slow, 0.5, 3).await.0, 1);

        // Degenerate arguments.
        assert_eq!(l.take_tokens(None, dest, 5.0, 0).await.0, 0);
        assert_eq!(l.take_tokens(None, dest, 0.0, 3).await.0, 0);
        assert_eq!(l.take_tokens(None, dest, f64::NAN, 3).await.0, 0);
        assert_eq!(l.take_tokens(None, dest, f64::INFINITY, 3).await.0, 3);
    }

    #[tokio::test]
    async fn limits_local_idle_destinations_vanish() {
        let (l, clock) = local(config());
        let dest = Uuid::new_v4();
        for _ in 0..3 {
            l.record(None, dest, false, Duration::ZERO).await;
        }
        l.take_tokens(None, dest, 5.0, 1).await;
        assert_eq!(l.circuits.lock().unwrap().entries.len(), 1);
        assert_eq!(l.buckets.lock().unwrap().entries.len(), 1);
        clock.advance(Duration::from_secs(600));
        assert_eq!(l.state(None, dest).await.0, CircuitState::Closed);
        // The next operation sweeps expired entries.
        let other = Uuid::new_v4();
        l.record(None, other, true, Duration::ZERO).await;
        l.take_tokens(None, other, 5.0, 1).await;
        assert!(!l.circuits.lock().unwrap().entries.contains_key(&dest));
        assert!(!l.buckets.lock().unwrap().entries.contains_key(&dest));
    }

    #[test]
    fn limits_futures_are_send() {
        fn is_send<T: Send>(_: T) {}
        let l = Limits::new("x", CircuitConfig::default());
        is_send(l.admit(None, Uuid::nil(), 1));
        is_send(l.record(None, Uuid::nil(), true, Duration::ZERO));
        is_send(l.take_tokens(None, Uuid::nil(), 1.0, 1));
        is_send(l.return_tokens(None, Uuid::nil(), 1.0, 1));
        is_send(l.state(None, Uuid::nil()));
        is_send(l.health(None, Uuid::nil()));
        is_send(l.release_grants(None, Uuid::nil(), 1));
    }

    #[test]
    fn limits_config_defaults_and_state_serialization() {
        let c: CircuitConfig = serde_json::from_str(r#"{"open_secs": 5}"#).unwrap();
        assert_eq!((c.failure_threshold, c.min_requests, c.window_secs, c.open_secs), (5, 20, 60, 5));
        assert_eq!(c.failure_ratio, 0.5);
        assert_eq!((c.open_initial_ms, c.ramp_initial, c.ramp_max), (1_000, 2, 64));
        assert_eq!(serde_json::to_string(&CircuitState::HalfOpen).unwrap(), r#""half_open""#);
        assert_eq!(serde_json::to_string(&CircuitState::Ramping).unwrap(), r#""ramping""#);
        // The first open period never exceeds open_secs.
        let p = Params::new(&CircuitConfig { open_secs: 1, open_initial_ms: 5_000, ..c });
        assert_eq!((p.period(1), p.period(2), p.period(1000)), (1_000, 1_000, 1_000));
        let p = Params::new(&CircuitConfig::default());
        assert_eq!(
            (p.period(1), p.period(2), p.period(5), p.period(6), p.period(u32::MAX)),
            (1_000, 2_000, 16_000, 30_000, 30_000)
        );
    }

    // ---- ramp, burst rule, back-off and grants (local fallback) ----

    /// Ramp from 2 to 16, back-off from 1 s to 8 s, no ratio rule.
    fn ramp_config() -> CircuitConfig {
        CircuitConfig {
            failure_threshold: 3,
            failure_ratio: 2.0,
            min_requests: 10,
            window_secs: 60,
            open_secs: 8,
            open_initial_ms: 1_000,
            ramp_initial: 2,
            ramp_max: 16,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    async fn open_now(l: &Limits, conn: Option<MultiplexedConnection>, dest: Uuid) {
        for _ in 0..3 {
            l.record(conn.clone(), dest, false, Duration::ZERO).await;
        }
        assert_eq!(l.state(conn, dest).await.0, CircuitState::Open);
    }

    /// Records `n` successes of requests started now.
    async fn succeed(l: &Limits, conn: Option<MultiplexedConnection>, dest: Uuid, n: u32) -> CircuitState {
        let mut state = CircuitState::Closed;
        for _ in 0..n {
            state = l.record(conn.clone(), dest, true, Duration::ZERO).await.0;
        }
        state
    }

    /// Takes the probe after the open period of `period_ms` (local clock).
    async fn local_probe(l: &Limits, clock: &ManualClock, dest: Uuid, period_ms: u64) {
        clock.advance(MS * (period_ms as u32 - 1));
        assert_eq!(l.admit(None, dest, 10).await.0, 0, "still open before {period_ms} ms");
        clock.advance(MS);
        assert_eq!(l.admit(None, dest, 10).await, (1, Scope::Local), "one probe after {period_ms} ms");
        assert_eq!(l.admit(None, dest, 10).await.0, 0, "only one probe");
        assert_eq!(l.state(None, dest).await.0, CircuitState::HalfOpen);
    }

    #[tokio::test]
    async fn limits_local_probe_success_ramps_up_then_closes_fully() {
        let (l, clock) = local(ramp_config());
        let dest = Uuid::new_v4();
        open_now(&l, None, dest).await;
        local_probe(&l, &clock, dest, 1_000).await;
        assert_eq!(l.record(None, dest, true, Duration::ZERO).await, (CircuitState::Ramping, Scope::Local));
        let h = l.health(None, dest).await.0;
        assert_eq!((h.state, h.ramp_allowance, h.grants, h.opens), (CircuitState::Ramping, Some(2), 0, 1));

        // Allowance 2: two grants, then nothing until an outcome frees one.
        assert_eq!(l.admit(None, dest, 64).await, (2, Scope::Local));
        assert_eq!(l.admit(None, dest, 64).await.0, 0);
        assert_eq!(l.health(None, dest).await.0.grants, 2);
        assert_eq!(succeed(&l, None, dest, 1).await, CircuitState::Ramping);
        assert_eq!(l.admit(None, dest, 64).await.0, 1);
        // The second success at allowance 2 doubles it to 4; one grant is still outstanding.
        assert_eq!(succeed(&l, None, dest, 1).await, CircuitState::Ramping);
        assert_eq!(l.health(None, dest).await.0.ramp_allowance, Some(4));
        assert_eq!(l.admit(None, dest, 64).await.0, 3);
        assert_eq!(l.admit(None, dest, 2).await.0, 0);
        // 4 successes: 8; 8 successes: 16 = ramp_max, fully closed.
        assert_eq!(succeed(&l, None, dest, 4).await, CircuitState::Ramping);
        assert_eq!(l.health(None, dest).await.0.ramp_allowance, Some(8));
        assert_eq!(succeed(&l, None, dest, 7).await, CircuitState::Ramping);
        assert_eq!(succeed(&l, None, dest, 1).await, CircuitState::Closed);
        assert_eq!(l.health(None, dest).await.0, CircuitHealth::closed());
        assert_eq!(l.admit(None, dest, 64).await, (64, Scope::Local));

        // The back-off starts over after a full close: the next open period is 1 s again.
        open_now(&l, None, dest).await;
        assert_eq!(l.health(None, dest).await.0.opens, 1);
        local_probe(&l, &clock, dest, 1_000).await;
    }

    #[tokio::test]
    async fn limits_local_counted_failure_restarts_the_ramp_and_the_open_rules_still_apply() {
        let (l, clock) = local(ramp_config());
        let dest = Uuid::new_v4();
        open_now(&l, None, dest).await;
        local_probe(&l, &clock, dest, 1_000).await;
        succeed(&l, None, dest, 3).await;
        assert_eq!(l.health(None, dest).await.0.ramp_allowance, Some(4));
        assert_eq!(l.admit(None, dest, 64).await.0, 4);
        // One failure: back to the start of the ramp (its grant is freed; 3 are still out).
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await.0, CircuitState::Ramping);
        let h = l.health(None, dest).await.0;
        assert_eq!((h.ramp_allowance, h.grants), (Some(2), 3));
        assert_eq!(l.admit(None, dest, 64).await.0, 0);
        // A success in between resets the consecutive count but not the allowance level reached.
        assert_eq!(succeed(&l, None, dest, 1).await, CircuitState::Ramping);
        assert_eq!(l.health(None, dest).await.0.ramp_allowance, Some(2));
        // Three counted failures in a row re-open, with the doubled period (no full close in between).
        clock.advance(MS);
        l.record(None, dest, false, Duration::ZERO).await;
        clock.advance(MS);
        l.record(None, dest, false, Duration::ZERO).await;
        clock.advance(MS);
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Local));
        let h = l.health(None, dest).await.0;
        assert_eq!((h.state, h.opens, h.open_period_ms, h.grants), (CircuitState::Open, 2, 2_000, 0));
        local_probe(&l, &clock, dest, 2_000).await;
    }

    #[tokio::test]
    async fn limits_local_a_synchronized_burst_of_failures_counts_once() {
        let (l, clock) = local(ramp_config());
        let dest = Uuid::new_v4();
        clock.advance(Duration::from_secs(10));
        // 30 requests started together time out together after 2 s: one counted failure.
        for _ in 0..30 {
            assert_eq!(l.record(None, dest, false, Duration::from_secs(2)).await.0, CircuitState::Closed);
        }
        // Another straggler of the same burst, recorded a little later, still started before: not counted.
        clock.advance(Duration::from_millis(30));
        assert_eq!(l.record(None, dest, false, Duration::from_millis(2_030)).await.0, CircuitState::Closed);
        // A request started after the counted failure was recorded counts (2), and the next one (3) opens.
        clock.advance(Duration::from_millis(20));
        assert_eq!(l.record(None, dest, false, Duration::from_millis(40)).await.0, CircuitState::Closed);
        assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Local));

        // The ratio rule still counts each failure of a burst.
        let (l, clock) = local(CircuitConfig { failure_threshold: 5, failure_ratio: 0.5, ..ramp_config() });
        clock.advance(Duration::from_secs(10));
        for _ in 0..9 {
            assert_eq!(l.record(None, dest, false, Duration::from_secs(2)).await.0, CircuitState::Closed);
        }
        assert_eq!(l.record(None, dest, false, Duration::from_secs(2)).await.0, CircuitState::Open);
    }

    #[tokio::test]
    async fn limits_local_open_period_backs_off_exponentially_up_to_open_secs() {
        let (l, clock) = local(ramp_config());
        let dest = Uuid::new_v4();
        open_now(&l, None, dest).await;
        for (opens, period) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 8_000), (5, 8_000)] {
            let h = l.health(None, dest).await.0;
            assert_eq!((h.state, h.opens, h.open_period_ms), (CircuitState::Open, opens, period));
            local_probe(&l, &clock, dest, period).await;
            if opens < 5 {
                // The probe fails: re-open with the next period.
                assert_eq!(l.record(None, dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Local));
            }
        }
        // A success ramps; only the full close resets the back-off.
        assert_eq!(succeed(&l, None, dest, 1).await, CircuitState::Ramping);
        assert_eq!(l.health(None, dest).await.0.opens, 5);
        clock.advance(MS);
        open_now(&l, None, dest).await;
        assert_eq!(l.health(None, dest).await.0.open_period_ms, 8_000);
        local_probe(&l, &clock, dest, 8_000).await;
        succeed(&l, None, dest, 1 + 2 + 4 + 8).await;
        assert_eq!(l.state(None, dest).await.0, CircuitState::Closed);
        open_now(&l, None, dest).await;
        assert_eq!(l.health(None, dest).await.0.open_period_ms, 1_000);
    }

    #[tokio::test]
    async fn limits_local_grants_are_released_and_expire() {
        let (l, clock) = local(ramp_config());
        let dest = Uuid::new_v4();
        open_now(&l, None, dest).await;
        local_probe(&l, &clock, dest, 1_000).await;
        // An unused probe goes back at once.
        l.release_probe(None, dest).await;
        assert_eq!(l.admit(None, dest, 10).await.0, 1);
        // The probe's answer arrives; outcomes of attempts started before the probe phase are ignored.
        clock.advance(Duration::from_millis(100));
        assert_eq!(l.record(None, dest, false, Duration::from_secs(3)).await.0, CircuitState::HalfOpen);
        assert_eq!(l.record(None, dest, true, Duration::from_millis(50)).await.0, CircuitState::Ramping);

        assert_eq!(l.admit(None, dest, 10).await.0, 2);
        l.release_grants(None, dest, 1).await;
        assert_eq!(l.admit(None, dest, 10).await.0, 1);
        l.release_grants(None, dest, 5).await;
        assert_eq!(l.health(None, dest).await.0.grants, 0);
        assert_eq!(l.admit(None, dest, 10).await.0, 2);
        // Stale outcomes neither free grants nor grow the ramp.
        assert_eq!(l.record(None, dest, true, Duration::from_secs(60)).await.0, CircuitState::Ramping);
        let h = l.health(None, dest).await.0;
        assert_eq!((h.grants, h.ramp_allowance), (2, Some(2)));
        // Never answered (their node died): the grants expire after open_secs and the ramp goes on.
        clock.advance(Duration::from_millis(7_999));
        assert_eq!(l.admit(None, dest, 10).await.0, 0);
        clock.advance(MS);
        assert_eq!(l.health(None, dest).await.0.grants, 0);
        assert_eq!(l.admit(None, dest, 10).await.0, 2);
        // Releasing is a no-op when closed.
        let other = Uuid::new_v4();
        l.release_grants(None, other, 3).await;
        assert_eq!(l.admit(None, other, 10).await.0, 10);
    }

    // ---- Redis (cluster scope) ----

    async fn redis() -> MultiplexedConnection {
        let url = std::env::var("HGTEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = redis::Client::open(url).expect("Redis URL");
        tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
            .await
            .expect("Redis connection timed out")
            .expect("these tests need Redis at 127.0.0.1:6379 (or HGTEST_REDIS)")
    }

    fn prefix() -> String {
        format!("hgtest-limits-{}", Uuid::new_v4().simple())
    }

    async fn keys(conn: &mut MultiplexedConnection, prefix: &str) -> Vec<String> {
        redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(conn).await.unwrap()
    }

    async fn cleanup(mut conn: MultiplexedConnection, prefix: &str) {
        let found = keys(&mut conn, prefix).await;
        if !found.is_empty() {
            redis::cmd("DEL").arg(&found).query_async::<i64>(&mut conn).await.unwrap();
        }
        assert!(keys(&mut conn, prefix).await.is_empty());
    }

    /// Waits (bounded) until one of two concurrent callers gets the half-open probe; returns both grants.
    async fn race_for_probe(a: &Limits, b: &Limits, conn: &MultiplexedConnection, dest: Uuid) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (x, y) = tokio::join!(a.admit(Some(conn.clone()), dest, 5), b.admit(Some(conn.clone()), dest, 5));
            assert_eq!((x.1, y.1), (Scope::Cluster, Scope::Cluster));
            if x.0 + y.0 > 0 {
                return (x.0, y.0);
            }
            assert!(Instant::now() < deadline, "no half-open probe was admitted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn limits_redis_circuit_lifecycle() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());

        assert_eq!(l.admit(c(), dest, 4).await, (4, Scope::Cluster));
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.record(c(), dest, true, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        let ttl: i64 = redis::cmd("PTTL").arg(l.circuit_key(dest)).query_async(&mut conn.clone()).await.unwrap();
        assert!(ttl > 0, "the circuit key has an expiry");
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(l.state(c(), dest).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 4).await, (0, Scope::Cluster));

        // One probe, and the concurrent second caller gets nothing.
        let (x, y) = race_for_probe(&l, &l, &conn, dest).await;
        assert_eq!(x + y, 1);
        assert_eq!(l.state(c(), dest).await, (CircuitState::HalfOpen, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 4).await.0, 0);
        // Probe success closes.
        assert_eq!(l.record(c(), dest, true, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 4).await, (4, Scope::Cluster));

        // Open again; probe failure re-opens.
        for _ in 0..3 {
            l.record(c(), dest, false, Duration::ZERO).await;
        }
        assert_eq!(l.state(c(), dest).await.0, CircuitState::Open);
        let (x, y) = race_for_probe(&l, &l, &conn, dest).await;
        assert_eq!(x + y, 1);
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 4).await.0, 0);
        let (x, y) = race_for_probe(&l, &l, &conn, dest).await;
        assert_eq!(x + y, 1);

        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_ratio_rule_needs_min_requests() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, ratio_config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());
        for i in 0..9 {
            assert_eq!(l.record(c(), dest, i % 2 == 1, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        }
        assert_eq!(l.record(c(), dest, true, Duration::ZERO).await.0, CircuitState::Closed);
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 3).await, (0, Scope::Cluster));

        let calm = Uuid::new_v4();
        for i in 0..30 {
            assert_eq!(l.record(c(), calm, i % 3 != 0, Duration::ZERO).await.0, CircuitState::Closed);
        }
        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_token_bucket_bursts_and_refills() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());

        assert_eq!(l.take_tokens(c(), dest, 5.0, 10).await, (5, Scope::Cluster));
        let ttl: i64 = redis::cmd("PTTL").arg(l.bucket_key(dest)).query_async(&mut conn.clone()).await.unwrap();
        assert!(ttl > 0, "the bucket key has an expiry");
        // Refills (waiting on the condition, not on a time bound).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = 0;
        while got == 0 {
            assert!(Instant::now() < deadline, "the bucket never refilled");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (n, scope) = l.take_tokens(c(), dest, 5.0, 10).await;
            assert_eq!(scope, Scope::Cluster);
            assert!(n <= 5);
            got = n;
        }
        // Never more than the burst, whatever is given back.
        l.return_tokens(c(), dest, 5.0, 100).await;
        assert_eq!(l.take_tokens(c(), dest, 5.0, 100).await.0, 5);

        // A slow bucket (burst 1, one token per 1000 s) makes giving back observable.
        let slow = Uuid::new_v4();
        assert_eq!(l.take_tokens(c(), slow, 0.001, 3).await.0, 1);
        assert_eq!(l.take_tokens(c(), slow, 0.001, 3).await.0, 0);
        l.return_tokens(c(), slow, 0.001, 1).await;
        assert_eq!(l.take_tokens(c(), slow, 0.001, 3).await.0, 1);
        assert_eq!(l.take_tokens(c(), slow, 0.001, 3).await.0, 0);

        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_instances_share_bucket_and_circuit() {
        let conn = redis().await;
        let prefix = prefix();
        let a = Limits::new(&prefix, config());
        let b = Limits::new(&prefix, config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());

        assert_eq!(a.take_tokens(c(), dest, 0.001, 1).await, (1, Scope::Cluster));
        assert_eq!(b.take_tokens(c(), dest, 0.001, 1).await, (0, Scope::Cluster));
        b.return_tokens(c(), dest, 0.001, 1).await;
        assert_eq!(a.take_tokens(c(), dest, 0.001, 1).await, (1, Scope::Cluster));

        a.record(c(), dest, false, Duration::ZERO).await;
        b.record(c(), dest, false, Duration::ZERO).await;
        assert_eq!(a.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(b.state(c(), dest).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(b.admit(c(), dest, 3).await, (0, Scope::Cluster));
        // Exactly one probe across both instances.
        let (x, y) = race_for_probe(&a, &b, &conn, dest).await;
        assert_eq!(x + y, 1);
        assert_eq!(a.admit(c(), dest, 3).await.0 + b.admit(c(), dest, 3).await.0, 0);
        assert_eq!(b.record(c(), dest, true, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(a.admit(c(), dest, 3).await, (3, Scope::Cluster));

        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_a_circuit_seen_closed_admits_without_asking_until_an_answer_or_the_trust_ends() {
        let conn = redis().await;
        let prefix = prefix();
        let clock = Arc::new(ManualClock::new());
        // Open periods long enough that no probe phase begins while a step runs, however loaded the machine.
        let long = CircuitConfig { open_secs: 30, open_initial_ms: 30_000, ..config() };
        let a = Limits::with_clock(&prefix, long, clock.clone());
        let b = Limits::new(&prefix, long);
        let c = || Some(conn.clone());
        assert_eq!(a.trust, CLOSED_TRUSTED_FOR);

        // Another process opens the circuit: `a`, having seen it closed, admits without asking until the trust ends.
        let dest = Uuid::new_v4();
        assert_eq!(a.admit(c(), dest, 4).await, (4, Scope::Cluster));
        open_now(&b, c(), dest).await;
        clock.advance(CLOSED_TRUSTED_FOR - MS);
        assert_eq!(a.admit(c(), dest, 4).await, (4, Scope::Cluster), "trusted: Redis was not asked");
        clock.advance(MS);
        assert_eq!(a.admit(c(), dest, 4).await, (0, Scope::Cluster), "the trust ended: Redis answered open");

        // A success held (not sent) does not renew the trust.
        let dest = Uuid::new_v4();
        assert_eq!(a.admit(c(), dest, 4).await, (4, Scope::Cluster));
        a.record(c(), dest, true, Duration::ZERO).await;
        assert!(a.holds_successes());
        open_now(&b, c(), dest).await;
        clock.advance(CLOSED_TRUSTED_FOR);
        assert_eq!(a.admit(c(), dest, 4).await, (0, Scope::Cluster));
        a.flush_held(c()).await;

        // A flush of held successes answers the state anew: the open is seen there, the trust ends at once.
        let dest = Uuid::new_v4();
        assert_eq!(a.admit(c(), dest, 4).await, (4, Scope::Cluster));
        a.record(c(), dest, true, Duration::ZERO).await;
        assert!(a.holds_successes());
        open_now(&b, c(), dest).await;
        a.flush_held(c()).await;
        assert_eq!(a.admit(c(), dest, 4).await, (0, Scope::Cluster));

        // So does this process's own failure that opens it: its record answers open.
        let dest = Uuid::new_v4();
        assert_eq!(a.admit(c(), dest, 4).await, (4, Scope::Cluster));
        for _ in 0..2 {
            assert_eq!(a.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        }
        assert_eq!(a.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(a.admit(c(), dest, 4).await, (0, Scope::Cluster));

        // And a state read: another process opens it, this one reads the state.
        let dest = Uuid::new_v4();
        assert_eq!(a.admit(c(), dest, 4).await, (4, Scope::Cluster));
        open_now(&b, c(), dest).await;
        assert_eq!(a.state(c(), dest).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(a.admit(c(), dest, 4).await, (0, Scope::Cluster));

        // Without Redis nothing is trusted: the local state answers, though Redis said closed just now.
        let dest = Uuid::new_v4();
        open_now(&a, None, dest).await;
        assert_eq!(a.admit(c(), dest, 4).await, (4, Scope::Cluster));
        assert_eq!(a.admit(None, dest, 4).await, (0, Scope::Local));
        cleanup(conn, &prefix).await;
    }

    #[test]
    fn an_answer_to_an_earlier_question_heard_late_does_not_bring_the_trust_back() {
        let clock = Arc::new(ManualClock::new());
        let l = Limits::with_clock("hgtest-sights", config(), clock.clone());
        let dest = Uuid::new_v4();
        let earlier = clock.now();
        clock.advance(MS);
        l.note_sight(dest, false, clock.now());
        l.note_sight(dest, true, earlier);
        assert!(!l.trusts_closed(dest) && !l.saw_closed(dest));
        l.note_sight(dest, true, clock.now());
        assert!(l.trusts_closed(dest) && l.saw_closed(dest));
    }

    #[test]
    fn the_trust_lasts_at_most_half_the_shortest_open_period() {
        let trust = |c: CircuitConfig| Limits::new("hgtest-trust", c).trust;
        assert_eq!(trust(config()), CLOSED_TRUSTED_FOR);
        assert_eq!(trust(CircuitConfig { open_initial_ms: 100, ..config() }), Duration::from_millis(50));
        assert_eq!(trust(CircuitConfig { open_secs: 0, ..config() }), Duration::ZERO);
    }

    async fn field(conn: &MultiplexedConnection, l: &Limits, dest: Uuid, name: &str) -> Option<i64> {
        redis::cmd("HGET").arg(l.circuit_key(dest)).arg(name).query_async(&mut conn.clone()).await.unwrap()
    }

    #[tokio::test]
    async fn limits_redis_successes_to_a_closed_circuit_are_held_and_counted_in_bulk() {
        let conn = redis().await;
        let prefix = prefix();
        let (a, b) = (Limits::new(&prefix, ratio_config()), Limits::new(&prefix, ratio_config()));
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());

        // Until a process has seen the circuit closed, a success goes to Redis at once; then successes are held.
        assert_eq!(a.record(c(), dest, true, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(field(&conn, &a, dest, "wtotal").await, Some(1));
        for _ in 0..4 {
            assert_eq!(a.record(c(), dest, true, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        }
        assert!(a.holds_successes());
        assert_eq!(field(&conn, &a, dest, "wtotal").await, Some(1), "held, not yet counted");
        a.flush_held(c()).await;
        assert!(!a.holds_successes());
        assert_eq!(field(&conn, &a, dest, "wtotal").await, Some(5));

        // This process's next failure counts the successes held before it first (1 of 10 failed); then 8 more
        // failures from another process open it (9 of 18), not 5 (6 of 11) as without the held successes.
        for _ in 0..4 {
            a.record(c(), dest, true, Duration::ZERO).await;
        }
        assert_eq!(a.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(field(&conn, &a, dest, "wtotal").await, Some(10));
        assert_eq!(field(&conn, &a, dest, "wfail").await, Some(1));
        for _ in 0..7 {
            assert_eq!(b.record(c(), dest, false, Duration::ZERO).await.0, CircuitState::Closed);
        }
        assert_eq!(b.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));

        // Successes held while this process still saw it closed are dropped: an open circuit ignores them.
        a.record(c(), dest, true, Duration::ZERO).await;
        assert!(a.holds_successes());
        a.flush_held(c()).await;
        assert_eq!(a.state(c(), dest).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(field(&conn, &a, dest, "wtotal").await, None, "an open circuit keeps no window");
        // Having seen it open, this process records its next outcome at once.
        a.record(c(), dest, true, Duration::ZERO).await;
        assert!(!a.holds_successes());
        cleanup(conn, &prefix).await;
    }

    /// Process `a` (on a manual clock) holds a success, then process `b` counts a failure, then a minute passes on
    /// `a`'s clock: the held success is older than the failure when it reaches Redis. The window then holds 3.
    async fn a_success_held_before_another_process_failed(
        conn: &MultiplexedConnection,
        prefix: &str,
    ) -> (Limits, Limits, Uuid) {
        let clock = Arc::new(ManualClock::new());
        let a = Limits::with_clock(prefix, config(), clock.clone());
        let b = Limits::new(prefix, config());
        let dest = Uuid::new_v4();
        // The first success goes to Redis at once (`a` has not seen the circuit yet); the second is held.
        a.record(Some(conn.clone()), dest, true, Duration::ZERO).await;
        a.record(Some(conn.clone()), dest, true, Duration::ZERO).await;
        assert!(a.holds_successes());
        b.record(Some(conn.clone()), dest, false, Duration::ZERO).await;
        clock.advance(Duration::from_secs(60));
        (a, b, dest)
    }

    #[tokio::test]
    async fn limits_redis_held_successes_do_not_undo_a_failure_counted_after_them() {
        let conn = redis().await;
        let prefix = prefix();
        let c = || Some(conn.clone());
        let (a, _b, dest) = a_success_held_before_another_process_failed(&conn, &prefix).await;
        // Flushed, the held success adds to the window but leaves the consecutive count alone.
        a.flush_held(c()).await;
        assert_eq!(field(&conn, &a, dest, "consec").await, Some(1));
        assert_eq!(field(&conn, &a, dest, "wtotal").await, Some(3));
        // A success held after the failure resets it.
        a.record(c(), dest, true, Duration::ZERO).await;
        a.flush_held(c()).await;
        assert_eq!(field(&conn, &a, dest, "consec").await, Some(0));
        assert_eq!(field(&conn, &a, dest, "wtotal").await, Some(4));
        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_a_failure_carrying_held_successes_keeps_failures_counted_after_them() {
        let conn = redis().await;
        let prefix = prefix();
        let c = || Some(conn.clone());
        let (a, b, dest) = a_success_held_before_another_process_failed(&conn, &prefix).await;
        // Carried by this process's own failure, the held success joins the window, but the consecutive count keeps
        // the other process's failure, and the third consecutive failure opens the circuit.
        assert_eq!(a.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Cluster));
        assert!(!a.holds_successes());
        assert_eq!(field(&conn, &a, dest, "consec").await, Some(2));
        assert_eq!(field(&conn, &a, dest, "wtotal").await, Some(4));
        assert_eq!(b.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));
        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_held_successes_go_to_the_local_state_when_redis_fails() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, ratio_config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());
        for _ in 0..10 {
            l.record(c(), dest, true, Duration::ZERO).await;
        }
        // The script fails (WRONGTYPE): the 9 held successes count locally, so 8 local failures do not open it
        // (8 of 17), and the ninth does (9 of 18).
        let _: () = redis::cmd("DEL").arg(l.circuit_key(dest)).query_async(&mut conn.clone()).await.unwrap();
        let _: () = redis::cmd("SET").arg(l.circuit_key(dest)).arg("x").query_async(&mut conn.clone()).await.unwrap();
        l.flush_held(c()).await;
        assert!(!l.holds_successes());
        for _ in 0..8 {
            assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Local));
        }
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Local));
        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_script_error_falls_back_to_local() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());
        // Keys of the wrong type make the scripts fail with WRONGTYPE.
        let _: () = redis::cmd("SET").arg(l.circuit_key(dest)).arg("x").query_async(&mut conn.clone()).await.unwrap();
        let _: () = redis::cmd("SET").arg(l.bucket_key(dest)).arg("x").query_async(&mut conn.clone()).await.unwrap();

        assert_eq!(l.take_tokens(c(), dest, 5.0, 10).await, (5, Scope::Local));
        l.return_tokens(c(), dest, 5.0, 2).await;
        assert_eq!(l.take_tokens(c(), dest, 5.0, 10).await.1, Scope::Local);
        assert_eq!(l.admit(c(), dest, 2).await, (2, Scope::Local));
        for _ in 0..2 {
            assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Closed, Scope::Local));
        }
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Local));
        assert_eq!(l.state(c(), dest).await, (CircuitState::Open, Scope::Local));
        assert_eq!(l.admit(c(), dest, 2).await, (0, Scope::Local));
        assert!(l.degraded.load(Ordering::Relaxed));

        // Once Redis answers again, the cluster state (still closed) is used.
        cleanup(conn.clone(), &prefix).await;
        assert_eq!(l.admit(c(), dest, 2).await, (2, Scope::Cluster));
        assert!(!l.degraded.load(Ordering::Relaxed));
        cleanup(conn, &prefix).await;
    }

    // ---- ramp, burst rule, back-off and grants (Redis) ----

    /// Like `ramp_config`, with short periods since Redis's clock cannot be moved: 300 ms doubling up to 1 s.
    fn redis_ramp_config() -> CircuitConfig {
        CircuitConfig { open_secs: 1, open_initial_ms: 300, ..ramp_config() }
    }

    /// Waits (bounded) until `admit` hands out the half-open probe.
    async fn redis_probe(l: &Limits, conn: &MultiplexedConnection, dest: Uuid) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (n, scope) = l.admit(Some(conn.clone()), dest, 10).await;
            assert_eq!(scope, Scope::Cluster);
            if n > 0 {
                assert_eq!(n, 1);
                break;
            }
            assert!(Instant::now() < deadline, "no half-open probe was admitted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(l.admit(Some(conn.clone()), dest, 10).await.0, 0, "only one probe");
        assert_eq!(l.state(Some(conn.clone()), dest).await, (CircuitState::HalfOpen, Scope::Cluster));
    }

    #[tokio::test]
    async fn limits_redis_probe_success_ramps_up_then_closes_fully() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, redis_ramp_config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());
        open_now(&l, c(), dest).await;
        redis_probe(&l, &conn, dest).await;
        assert_eq!(l.record(c(), dest, true, Duration::ZERO).await, (CircuitState::Ramping, Scope::Cluster));
        let h = l.health(c(), dest).await;
        assert_eq!(h.1, Scope::Cluster);
        assert_eq!((h.0.state, h.0.ramp_allowance, h.0.grants, h.0.opens), (CircuitState::Ramping, Some(2), 0, 1));

        assert_eq!(l.admit(c(), dest, 64).await, (2, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 64).await.0, 0);
        assert_eq!(l.health(c(), dest).await.0.grants, 2);
        let ttl: i64 = redis::cmd("PTTL").arg(l.grants_key(dest)).query_async(&mut conn.clone()).await.unwrap();
        assert!(ttl > 0, "the grants key has an expiry");
        assert_eq!(succeed(&l, c(), dest, 1).await, CircuitState::Ramping);
        assert_eq!(l.admit(c(), dest, 64).await.0, 1);
        assert_eq!(succeed(&l, c(), dest, 1).await, CircuitState::Ramping);
        assert_eq!(l.health(c(), dest).await.0.ramp_allowance, Some(4));
        assert_eq!(l.admit(c(), dest, 64).await.0, 3);
        assert_eq!(l.admit(c(), dest, 2).await.0, 0);
        assert_eq!(succeed(&l, c(), dest, 4).await, CircuitState::Ramping);
        assert_eq!(l.health(c(), dest).await.0.ramp_allowance, Some(8));
        assert_eq!(succeed(&l, c(), dest, 7).await, CircuitState::Ramping);
        assert_eq!(succeed(&l, c(), dest, 1).await, CircuitState::Closed);
        assert_eq!(l.health(c(), dest).await, (CircuitHealth::closed(), Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 64).await, (64, Scope::Cluster));

        // The back-off starts over after a full close.
        open_now(&l, c(), dest).await;
        let h = l.health(c(), dest).await.0;
        assert_eq!((h.opens, h.open_period_ms), (1, 300));
        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_counted_failure_restarts_the_ramp_and_open_backs_off() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, redis_ramp_config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());
        open_now(&l, c(), dest).await;
        // Failed probes: 300, 600, 1000 (capped), 1000 ms.
        for (opens, period) in [(1, 300), (2, 600), (3, 1_000), (4, 1_000)] {
            let h = l.health(c(), dest).await.0;
            assert_eq!((h.state, h.opens, h.open_period_ms), (CircuitState::Open, opens, period));
            redis_probe(&l, &conn, dest).await;
            if opens < 4 {
                assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));
            }
        }
        succeed(&l, c(), dest, 3).await;
        assert_eq!(l.health(c(), dest).await.0.ramp_allowance, Some(4));
        assert_eq!(l.admit(c(), dest, 64).await.0, 4);
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await.0, CircuitState::Ramping);
        let h = l.health(c(), dest).await.0;
        assert_eq!((h.ramp_allowance, h.grants, h.opens), (Some(2), 3, 4));
        assert_eq!(l.admit(c(), dest, 64).await.0, 0);
        l.record(c(), dest, false, Duration::ZERO).await;
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await, (CircuitState::Open, Scope::Cluster));
        let h = l.health(c(), dest).await.0;
        assert_eq!((h.opens, h.open_period_ms, h.grants), (5, 1_000, 0));
        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_a_synchronized_burst_of_failures_counts_once() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, redis_ramp_config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());
        for _ in 0..30 {
            assert_eq!(
                l.record(c(), dest, false, Duration::from_secs(2)).await,
                (CircuitState::Closed, Scope::Cluster)
            );
        }
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await.0, CircuitState::Closed);
        assert_eq!(l.record(c(), dest, false, Duration::ZERO).await.0, CircuitState::Open);

        // The ratio rule still counts each.
        let l = Limits::new(&prefix, CircuitConfig { failure_threshold: 5, failure_ratio: 0.5, ..redis_ramp_config() });
        let dest = Uuid::new_v4();
        for _ in 0..9 {
            assert_eq!(l.record(c(), dest, false, Duration::from_secs(2)).await.0, CircuitState::Closed);
        }
        assert_eq!(l.record(c(), dest, false, Duration::from_secs(2)).await.0, CircuitState::Open);
        cleanup(conn, &prefix).await;
    }

    #[tokio::test]
    async fn limits_redis_grants_are_released_and_expire() {
        let conn = redis().await;
        let prefix = prefix();
        let l = Limits::new(&prefix, redis_ramp_config());
        let dest = Uuid::new_v4();
        let c = || Some(conn.clone());
        open_now(&l, c(), dest).await;
        redis_probe(&l, &conn, dest).await;
        l.release_probe(c(), dest).await;
        assert_eq!(l.admit(c(), dest, 10).await.0, 1);
        // An attempt started long before the probe phase: ignored.
        assert_eq!(l.record(c(), dest, false, Duration::from_secs(60)).await.0, CircuitState::HalfOpen);
        assert_eq!(l.record(c(), dest, true, Duration::ZERO).await.0, CircuitState::Ramping);

        assert_eq!(l.admit(c(), dest, 10).await.0, 2);
        l.release_grants(c(), dest, 1).await;
        assert_eq!(l.admit(c(), dest, 10).await.0, 1);
        l.release_grants(c(), dest, 5).await;
        assert_eq!(l.health(c(), dest).await.0.grants, 0);
        assert_eq!(l.admit(c(), dest, 10).await.0, 2);
        assert_eq!(l.record(c(), dest, true, Duration::from_secs(60)).await.0, CircuitState::Ramping);
        let h = l.health(c(), dest).await.0;
        assert_eq!((h.grants, h.ramp_allowance), (2, Some(2)));
        // Never answered: they expire after open_secs (1 s), waiting on the condition.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = l.admit(c(), dest, 10).await.0;
            if n > 0 {
                assert_eq!(n, 2);
                break;
            }
            assert!(Instant::now() < deadline, "the grants never expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let other = Uuid::new_v4();
        l.release_grants(c(), other, 3).await;
        assert_eq!(l.admit(c(), other, 10).await.0, 10);
        cleanup(conn, &prefix).await;
    }
}
