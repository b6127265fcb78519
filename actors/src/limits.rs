//! Per-destination circuit breakers and rate limits, cluster-wide through Redis with a local fallback.
//!
//! The delivery scheduler asks [`Limits::admit`] (the circuit breaker) and [`Limits::take_tokens`] (the token
//! bucket) how many deliveries to one destination may start now; the result writer reports each outcome with
//! [`Limits::record`]. Several hookgate processes sharing one Redis share one breaker and one bucket per
//! destination: every Redis-side operation is a single Lua script (EVALSHA) that reads the clock with
//! `redis.call('TIME')`, so all processes agree on time and no two of them can interleave a read-modify-write.
//!
//! Keys (both hashes, both with a PEXPIRE refreshed on every write, so an idle destination leaves nothing behind):
//! - `{prefix}:cb:{dest}`: `state` (0 closed, 1 open, 2 half-open), `consec` (consecutive failures), the tumbling
//!   window `wstart`/`wtotal`/`wfail`, `opened` (ms) and `probe` (ms the half-open probe was handed out). A missing
//!   key is a closed circuit with clean counters. TTL: `2 * max(window_secs, open_secs) + 60` seconds.
//! - `{prefix}:rl:{dest}`: `tokens` (fractional) and `ts` (ms of the last update). A missing key is a full bucket;
//!   the TTL is the time a bucket takes to refill completely (plus a second), after which it would be full anyway.
//!
//! When the caller has no connection, or a script fails (error or `op_timeout`), the very same logic runs on
//! in-process state and the answer says [`Scope::Local`]: hookgate keeps protecting destinations, per process, while
//! Redis is away. Local state is not merged back; once Redis answers again the cluster state is used.
//!
//! Semantics worth knowing:
//! - The failure window is tumbling (it restarts `window_secs` after its first outcome), not sliding. Both rules are
//!   evaluated when a failure is recorded; a success never opens the circuit. `failure_threshold = 0` disables the
//!   consecutive rule; `failure_ratio > 1` disables the ratio rule.
//! - Outcomes recorded while open are ignored (they belong to requests started before the circuit opened). While
//!   half-open, the first outcome recorded decides (success closes, failure re-opens); hookgate only starts the
//!   probe in that state, so that outcome is normally the probe's.
//! - [`Limits::state`] returns the stored state: an open circuit whose `open_secs` have passed stays `Open` until a
//!   caller of [`Limits::admit`] takes the probe.
//! - Requires Redis >= 5 (scripts that write after `TIME` rely on effects replication).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Script;
use uuid::Uuid;

/// When the circuit of one destination opens, and for how long.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit (0 disables this rule).
    pub failure_threshold: u32,
    /// Failed share of the window's outcomes that opens the circuit, once the window holds `min_requests`.
    pub failure_ratio: f64,
    /// Outcomes the window must hold before `failure_ratio` counts.
    pub min_requests: u32,
    /// Length of the (tumbling) window of the ratio rule.
    pub window_secs: u64,
    /// How long the circuit stays open before one half-open probe; also how long a probe may stay unanswered.
    pub open_secs: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, failure_ratio: 0.5, min_requests: 20, window_secs: 60, open_secs: 30 }
    }
}

/// A destination's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
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
    open_ms: i64,
    ttl_ms: i64,
}

impl Params {
    fn new(c: &CircuitConfig) -> Self {
        // Bounded so that every value stays exact as a Lua number (a double).
        let ms = |secs: u64| secs.min(1 << 32) as i64 * 1000;
        let ratio = if c.failure_ratio.is_nan() { 2.0 } else { c.failure_ratio.clamp(0.0, 2.0) };
        let window_ms = ms(c.window_secs);
        let open_ms = ms(c.open_secs);
        Self {
            threshold: c.failure_threshold,
            ratio,
            min_requests: c.min_requests,
            window_ms,
            open_ms,
            ttl_ms: 2 * window_ms.max(open_ms) + 60_000,
        }
    }
}

/// Lua preamble: the Redis server's clock in milliseconds.
const NOW: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// KEYS[1] circuit hash. ARGV: want, open_ms, ttl_ms. Returns how many requests may start.
const CB_ADMIT: &str = r#"
local key = KEYS[1]
local want = tonumber(ARGV[1])
local open_ms = tonumber(ARGV[2])
local h = redis.call('HMGET', key, 'state', 'opened', 'probe')
local state = tonumber(h[1]) or 0
if state == 0 then
  return want
end
if state == 1 then
  local since = now - (tonumber(h[2]) or 0)
  if since >= 0 and since < open_ms then
    return 0
  end
else
  local probe = tonumber(h[3])
  if probe ~= nil and now - probe >= 0 and now - probe < open_ms then
    return 0
  end
end
redis.call('HSET', key, 'state', 2, 'probe', string.format('%.0f', now))
redis.call('PEXPIRE', key, ARGV[3])
return 1
"#;

/// KEYS[1] circuit hash. ARGV: success (1|0), failure_threshold, failure_ratio, min_requests, window_ms, ttl_ms.
/// Returns the state after recording (0 closed, 1 open, 2 half-open).
/// Frees an unused half-open probe slot, so the next round may probe at once.
const CB_RELEASE_PROBE: &str = r#"
if redis.call('HGET', KEYS[1], 'state') == '2' then
  redis.call('HDEL', KEYS[1], 'probe')
end
return 0
"#;

const CB_RECORD: &str = r#"
local key = KEYS[1]
local ok = ARGV[1] == '1'
local threshold = tonumber(ARGV[2])
local ratio = tonumber(ARGV[3])
local min_requests = tonumber(ARGV[4])
local window_ms = tonumber(ARGV[5])
local h = redis.call('HMGET', key, 'state', 'consec', 'wstart', 'wtotal', 'wfail')
local state = tonumber(h[1]) or 0
local function open()
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 1, 'opened', string.format('%.0f', now))
  redis.call('PEXPIRE', key, ARGV[6])
  return 1
end
if state == 1 then
  return 1
end
if state == 2 then
  if ok then
    redis.call('DEL', key)
    return 0
  end
  return open()
end
local consec = tonumber(h[2]) or 0
local wstart = tonumber(h[3])
local wtotal = tonumber(h[4]) or 0
local wfail = tonumber(h[5]) or 0
if wstart == nil or now - wstart >= window_ms or now < wstart then
  wstart = now
  wtotal = 0
  wfail = 0
end
wtotal = wtotal + 1
if ok then
  consec = 0
else
  consec = consec + 1
  wfail = wfail + 1
  if (threshold > 0 and consec >= threshold) or (wtotal >= min_requests and wfail / wtotal >= ratio) then
    return open()
  end
end
redis.call('HSET', key, 'state', 0, 'consec', consec, 'wstart', string.format('%.0f', wstart), 'wtotal', wtotal,
  'wfail', wfail)
redis.call('PEXPIRE', key, ARGV[6])
return 0
"#;

/// KEYS[1] circuit hash. Returns the stored state.
const CB_STATE: &str = "return tonumber(redis.call('HGET', KEYS[1], 'state')) or 0\n";

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
#[derive(Debug, Clone, Copy)]
struct Circuit {
    state: CircuitState,
    consec: u32,
    wstart: i64,
    wtotal: u32,
    wfail: u32,
    opened: i64,
    probe: Option<i64>,
    expires: i64,
}

impl Circuit {
    fn closed() -> Self {
        Self {
            state: CircuitState::Closed,
            consec: 0,
            wstart: i64::MIN,
            wtotal: 0,
            wfail: 0,
            opened: 0,
            probe: None,
            expires: 0,
        }
    }

    fn opened(now: i64, p: &Params) -> Self {
        Self { state: CircuitState::Open, opened: now, expires: now + p.ttl_ms, ..Self::closed() }
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
    release_probe: Script,
    record: Script,
    state: Script,
    take: Script,
    give_back: Script,
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

/// Default longest wait for one Redis script before the local fallback answers.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);

impl Limits {
    pub fn new(key_prefix: &str, circuit: CircuitConfig) -> Self {
        Self::with_clock(key_prefix, circuit, Arc::new(SystemClock))
    }

    /// Like [`Limits::new`], with the clock of the local fallback state (Redis always uses its own clock).
    pub fn with_clock(key_prefix: &str, circuit: CircuitConfig, clock: Arc<dyn Clock>) -> Self {
        let epoch = clock.now();
        Self {
            prefix: key_prefix.to_owned(),
            circuit,
            params: Params::new(&circuit),
            op_timeout: DEFAULT_OP_TIMEOUT,
            clock,
            epoch,
            circuits: Mutex::new(LocalMap::new()),
            buckets: Mutex::new(LocalMap::new()),
            scripts: Scripts {
                admit: Script::new(&format!("{NOW}{CB_ADMIT}")),
                release_probe: Script::new(CB_RELEASE_PROBE),
                record: Script::new(&format!("{NOW}{CB_RECORD}")),
                state: Script::new(CB_STATE),
                take: Script::new(&format!("{NOW}{RL_REFILL}{RL_TAKE}")),
                give_back: Script::new(&format!("{NOW}{RL_REFILL}{RL_RETURN}")),
            },
            degraded: AtomicBool::new(false),
        }
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
        if let Some(granted) = self.eval(conn, "take_tokens", &self.scripts.take, self.bucket_key(dest), &args).await {
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
        if self.eval(conn, "return_tokens", &self.scripts.give_back, self.bucket_key(dest), &args).await.is_some() {
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

    /// How many requests may start now: `want` when closed, 0 when open, and when half-open exactly one probe
    /// cluster-wide (the first caller after open_secs gets 1 and the state becomes half-open with a probe in flight;
    /// others get 0 until that probe's outcome is recorded or the probe slot expires after open_secs).
    pub async fn admit(&self, conn: Option<MultiplexedConnection>, dest: Uuid, want: u32) -> (u32, Scope) {
        if want == 0 {
            return (0, if conn.is_some() { Scope::Cluster } else { Scope::Local });
        }
        let p = self.params;
        let args = [want.to_string(), p.open_ms.to_string(), p.ttl_ms.to_string()];
        if let Some(n) = self.eval(conn, "admit", &self.scripts.admit, self.circuit_key(dest), &args).await {
            return (n.clamp(0, want as i64) as u32, Scope::Cluster);
        }
        let now = self.now_ms();
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.sweep(now, |c| c.expires);
        let Some(c) = circuits.entries.get_mut(&dest).filter(|c| c.expires > now) else {
            return (want, Scope::Local);
        };
        let may_probe = match c.state {
            CircuitState::Closed => return (want, Scope::Local),
            CircuitState::Open => !(0..p.open_ms).contains(&(now - c.opened)),
            CircuitState::HalfOpen => c.probe.is_none_or(|probe| !(0..p.open_ms).contains(&(now - probe))),
        };
        if !may_probe {
            return (0, Scope::Local);
        }
        c.state = CircuitState::HalfOpen;
        c.probe = Some(now);
        c.expires = now + p.ttl_ms;
        (1, Scope::Local)
    }

    /// Gives back a half-open probe slot that `admit` handed out but that was not used (nothing was sent).
    pub async fn release_probe(&self, conn: Option<MultiplexedConnection>, dest: Uuid) {
        if self.eval(conn, "release_probe", &self.scripts.release_probe, self.circuit_key(dest), &[]).await.is_some() {
            return;
        }
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = circuits.entries.get_mut(&dest).filter(|c| c.state == CircuitState::HalfOpen) {
            c.probe = None;
        }
    }

    /// Records one outcome. Closed: success resets consecutive failures; failure increments; opens when consecutive
    /// failures >= failure_threshold, or when the window holds >= min_requests with failed/total >= failure_ratio.
    /// Half-open: success closes (reset counters), failure re-opens (new open period). Returns the state after
    /// recording.
    pub async fn record(
        &self,
        conn: Option<MultiplexedConnection>,
        dest: Uuid,
        success: bool,
    ) -> (CircuitState, Scope) {
        let p = self.params;
        let args = [
            if success { "1" } else { "0" }.to_owned(),
            p.threshold.to_string(),
            p.ratio.to_string(),
            p.min_requests.to_string(),
            p.window_ms.to_string(),
            p.ttl_ms.to_string(),
        ];
        if let Some(code) = self.eval(conn, "record", &self.scripts.record, self.circuit_key(dest), &args).await {
            return (CircuitState::from_code(code), Scope::Cluster);
        }
        let now = self.now_ms();
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.sweep(now, |c| c.expires);
        let mut c = circuits.entries.get(&dest).filter(|c| c.expires > now).copied().unwrap_or_else(Circuit::closed);
        match c.state {
            CircuitState::Open => return (CircuitState::Open, Scope::Local),
            CircuitState::HalfOpen if success => {
                circuits.entries.remove(&dest);
                return (CircuitState::Closed, Scope::Local);
            }
            CircuitState::HalfOpen => {
                circuits.entries.insert(dest, Circuit::opened(now, &p));
                return (CircuitState::Open, Scope::Local);
            }
            CircuitState::Closed => {}
        }
        if !(0..p.window_ms).contains(&(now.saturating_sub(c.wstart))) {
            c.wstart = now;
            c.wtotal = 0;
            c.wfail = 0;
        }
        c.wtotal += 1;
        if success {
            c.consec = 0;
        } else {
            c.consec += 1;
            c.wfail += 1;
            let consecutive = p.threshold > 0 && c.consec >= p.threshold;
            let ratio = c.wtotal >= p.min_requests && c.wfail as f64 / c.wtotal as f64 >= p.ratio;
            if consecutive || ratio {
                circuits.entries.insert(dest, Circuit::opened(now, &p));
                return (CircuitState::Open, Scope::Local);
            }
        }
        c.expires = now + p.ttl_ms;
        circuits.entries.insert(dest, c);
        (CircuitState::Closed, Scope::Local)
    }

    /// The stored state of `dest`'s circuit (see the module notes on `Open` past `open_secs`).
    pub async fn state(&self, conn: Option<MultiplexedConnection>, dest: Uuid) -> (CircuitState, Scope) {
        if let Some(code) = self.eval(conn, "state", &self.scripts.state, self.circuit_key(dest), &[]).await {
            return (CircuitState::from_code(code), Scope::Cluster);
        }
        let now = self.now_ms();
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let state = circuits.entries.get(&dest).filter(|c| c.expires > now).map_or(CircuitState::Closed, |c| c.state);
        (state, Scope::Local)
    }

    /// Runs one script; `None` (after logging a transition to degraded) when there is no connection or it fails.
    async fn eval(
        &self,
        conn: Option<MultiplexedConnection>,
        op: &'static str,
        script: &Script,
        key: String,
        args: &[String],
    ) -> Option<i64> {
        let mut conn = conn?;
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(arg);
        }
        let outcome = tokio::time::timeout(self.op_timeout, invocation.invoke_async::<i64>(&mut conn)).await;
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
        metrics::counter!("hookgate_limits_local_fallback_total", "op" => op).increment(1);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                message = "Redis failed; circuit breakers and rate limits fall back to this process.",
                op,
                %error
            );
        }
        None
    }

    /// Milliseconds of the local clock since this `Limits` was created.
    fn now_ms(&self) -> i64 {
        self.clock.now().saturating_duration_since(self.epoch).as_millis() as i64
    }
}

/// How long a bucket of `rate` takes to refill from empty, plus a second: after that it is full, so it may vanish.
fn bucket_ttl_ms(rate: f64) -> i64 {
    let burst = rate.max(1.0);
    ((burst / rate * 1000.0).ceil() as i64).saturating_add(1000).min(1 << 42)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitConfig {
        CircuitConfig { failure_threshold: 3, failure_ratio: 0.5, min_requests: 10, window_secs: 60, open_secs: 1 }
    }

    fn ratio_config() -> CircuitConfig {
        CircuitConfig { failure_threshold: 0, failure_ratio: 0.5, min_requests: 10, window_secs: 60, open_secs: 30 }
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
        assert_eq!(l.record(None, dest, false).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.record(None, dest, false).await, (CircuitState::Closed, Scope::Local));
        // A success resets the consecutive count.
        assert_eq!(l.record(None, dest, true).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.record(None, dest, false).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.record(None, dest, false).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.record(None, dest, false).await, (CircuitState::Open, Scope::Local));
        assert_eq!(l.state(None, dest).await, (CircuitState::Open, Scope::Local));
        assert_eq!(l.admit(None, dest, 4).await, (0, Scope::Local));
        // Late outcomes while open change nothing.
        assert_eq!(l.record(None, dest, true).await, (CircuitState::Open, Scope::Local));

        clock.advance(Duration::from_millis(999));
        assert_eq!(l.admit(None, dest, 4).await, (0, Scope::Local));
        clock.advance(Duration::from_millis(1));
        let (a, b) = tokio::join!(l.admit(None, dest, 4), l.admit(None, dest, 4));
        assert_eq!((a.0 + b.0, a.1, b.1), (1, Scope::Local, Scope::Local));
        assert_eq!(l.state(None, dest).await.0, CircuitState::HalfOpen);
        assert_eq!(l.admit(None, dest, 4).await.0, 0);

        assert_eq!(l.record(None, dest, true).await, (CircuitState::Closed, Scope::Local));
        assert_eq!(l.admit(None, dest, 4).await, (4, Scope::Local));
        // Counters were reset: it takes the full threshold again.
        assert_eq!(l.record(None, dest, false).await.0, CircuitState::Closed);
        assert_eq!(l.record(None, dest, false).await.0, CircuitState::Closed);
        assert_eq!(l.record(None, dest, false).await.0, CircuitState::Open);
    }

    #[tokio::test]
    async fn limits_local_probe_failure_reopens_and_probe_slot_expires() {
        let (l, clock) = local(config());
        let dest = Uuid::new_v4();
        for _ in 0..3 {
            l.record(None, dest, false).await;
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.admit(None, dest, 2).await.0, 1);
        assert_eq!(l.record(None, dest, false).await, (CircuitState::Open, Scope::Local));
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
            assert_eq!(l.record(None, dest, i % 2 == 1).await.0, CircuitState::Closed);
        }
        // 10th: a success never opens (5/10 failed).
        assert_eq!(l.record(None, dest, true).await.0, CircuitState::Closed);
        // 11th: failure, 6/11 >= 0.5.
        assert_eq!(l.record(None, dest, false).await.0, CircuitState::Open);

        // The window is tumbling: failures older than window_secs are forgotten.
        let dest = Uuid::new_v4();
        for _ in 0..9 {
            l.record(None, dest, false).await;
        }
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.record(None, dest, false).await.0, CircuitState::Closed);

        // Below the ratio it stays closed.
        let dest = Uuid::new_v4();
        for i in 0..30 {
            assert_eq!(l.record(None, dest, i % 3 != 0).await.0, CircuitState::Closed);
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
            l.record(None, dest, false).await;
        }
        l.take_tokens(None, dest, 5.0, 1).await;
        assert_eq!(l.circuits.lock().unwrap().entries.len(), 1);
        assert_eq!(l.buckets.lock().unwrap().entries.len(), 1);
        clock.advance(Duration::from_secs(600));
        assert_eq!(l.state(None, dest).await.0, CircuitState::Closed);
        // The next operation sweeps expired entries.
        let other = Uuid::new_v4();
        l.record(None, other, true).await;
        l.take_tokens(None, other, 5.0, 1).await;
        assert!(!l.circuits.lock().unwrap().entries.contains_key(&dest));
        assert!(!l.buckets.lock().unwrap().entries.contains_key(&dest));
    }

    #[test]
    fn limits_futures_are_send() {
        fn is_send<T: Send>(_: T) {}
        let l = Limits::new("x", CircuitConfig::default());
        is_send(l.admit(None, Uuid::nil(), 1));
        is_send(l.record(None, Uuid::nil(), true));
        is_send(l.take_tokens(None, Uuid::nil(), 1.0, 1));
        is_send(l.return_tokens(None, Uuid::nil(), 1.0, 1));
        is_send(l.state(None, Uuid::nil()));
    }

    #[test]
    fn limits_config_defaults_and_state_serialization() {
        let c: CircuitConfig = serde_json::from_str(r#"{"open_secs": 5}"#).unwrap();
        assert_eq!((c.failure_threshold, c.min_requests, c.window_secs, c.open_secs), (5, 20, 60, 5));
        assert_eq!(c.failure_ratio, 0.5);
        assert_eq!(serde_json::to_string(&CircuitState::HalfOpen).unwrap(), r#""half_open""#);
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
        assert_eq!(l.record(c(), dest, false).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.record(c(), dest, false).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.record(c(), dest, true).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.record(c(), dest, false).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.record(c(), dest, false).await, (CircuitState::Closed, Scope::Cluster));
        let ttl: i64 = redis::cmd("PTTL").arg(l.circuit_key(dest)).query_async(&mut conn.clone()).await.unwrap();
        assert!(ttl > 0, "the circuit key has an expiry");
        assert_eq!(l.record(c(), dest, false).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(l.state(c(), dest).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 4).await, (0, Scope::Cluster));

        // One probe, and the concurrent second caller gets nothing.
        let (x, y) = race_for_probe(&l, &l, &conn, dest).await;
        assert_eq!(x + y, 1);
        assert_eq!(l.state(c(), dest).await, (CircuitState::HalfOpen, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 4).await.0, 0);
        // Probe success closes.
        assert_eq!(l.record(c(), dest, true).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 4).await, (4, Scope::Cluster));

        // Open again; probe failure re-opens.
        for _ in 0..3 {
            l.record(c(), dest, false).await;
        }
        assert_eq!(l.state(c(), dest).await.0, CircuitState::Open);
        let (x, y) = race_for_probe(&l, &l, &conn, dest).await;
        assert_eq!(x + y, 1);
        assert_eq!(l.record(c(), dest, false).await, (CircuitState::Open, Scope::Cluster));
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
            assert_eq!(l.record(c(), dest, i % 2 == 1).await, (CircuitState::Closed, Scope::Cluster));
        }
        assert_eq!(l.record(c(), dest, true).await.0, CircuitState::Closed);
        assert_eq!(l.record(c(), dest, false).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(l.admit(c(), dest, 3).await, (0, Scope::Cluster));

        let calm = Uuid::new_v4();
        for i in 0..30 {
            assert_eq!(l.record(c(), calm, i % 3 != 0).await.0, CircuitState::Closed);
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

        a.record(c(), dest, false).await;
        b.record(c(), dest, false).await;
        assert_eq!(a.record(c(), dest, false).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(b.state(c(), dest).await, (CircuitState::Open, Scope::Cluster));
        assert_eq!(b.admit(c(), dest, 3).await, (0, Scope::Cluster));
        // Exactly one probe across both instances.
        let (x, y) = race_for_probe(&a, &b, &conn, dest).await;
        assert_eq!(x + y, 1);
        assert_eq!(a.admit(c(), dest, 3).await.0 + b.admit(c(), dest, 3).await.0, 0);
        assert_eq!(b.record(c(), dest, true).await, (CircuitState::Closed, Scope::Cluster));
        assert_eq!(a.admit(c(), dest, 3).await, (3, Scope::Cluster));

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
            assert_eq!(l.record(c(), dest, false).await, (CircuitState::Closed, Scope::Local));
        }
        assert_eq!(l.record(c(), dest, false).await, (CircuitState::Open, Scope::Local));
        assert_eq!(l.state(c(), dest).await, (CircuitState::Open, Scope::Local));
        assert_eq!(l.admit(c(), dest, 2).await, (0, Scope::Local));
        assert!(l.degraded.load(Ordering::Relaxed));

        // Once Redis answers again, the cluster state (still closed) is used.
        cleanup(conn.clone(), &prefix).await;
        assert_eq!(l.admit(c(), dest, 2).await, (2, Scope::Cluster));
        assert!(!l.degraded.load(Ordering::Relaxed));
        cleanup(conn, &prefix).await;
    }
}
