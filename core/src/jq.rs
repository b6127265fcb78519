//! Route filters and transforms in jq syntax, compiled once and evaluated with time and size bounds.
//!
//! A route may carry a *filter* (does this event go to the route?) and a *transform* (what payload does the route
//! deliver?). Both are jq programs, compiled with [jaq](https://github.com/01mf02/jaq) when the configuration is
//! loaded ([`JqProgram::compile`]; a failure names the problem and its line and column) and evaluated over the
//! route input ([`route_input`]):
//!
//! ```json
//! {"body": <the body parsed as JSON, or the body as a string>, "headers": {"x-env": "prod"}, "source": "slug", "type": null}
//! ```
//!
//! [`evaluate`] runs the filter, then the transform, and answers a [`RouteOutcome`]:
//!
//! - the filter's *first* output decides: `false`, `null` or no output at all skip the route, anything else passes;
//! - the transform's first output, serialized as JSON, is the payload; without a transform the body is delivered
//!   unchanged; a transform that yields nothing is a failure (a mistake is more likely than an intended drop);
//! - an error in either, an output over `max_output_bytes`, or an output JSON cannot represent (`nan`, byte strings,
//!   non-string object keys) fails the route, naming the filter or the transform.
//!
//! # Time bound and abandoned evaluations
//!
//! jaq cannot be interrupted: a program such as `last(range(1e12))` computes until it is done. [`evaluate`]
//! therefore runs each evaluation on a thread of a small pool of its own and stops *waiting* after `timeout`,
//! answering [`RouteOutcome::Unavailable`]. The abandoned computation keeps its thread (and a CPU core) until it
//! finishes, which may be never. [`abandoned_evaluations`] counts every evaluation given up on; [`runaway_evaluations`]
//! is how many of those are still running.
//!
//! A time-out says nothing certain about the event: on a saturated machine a quick program can miss its bound too.
//! It is therefore never a verdict. `Unavailable` means "not decided now, ask again": ingest answers 503 with
//! `Retry-After` before anything is committed, so the producer retries, and a replay is retried later.
//!
//! Budgets are per program text (so per route), and survive the catalog's reloads, which compile every program
//! again: at most [`MAX_RUNNING_PER_PROGRAM`] evaluations of one program may be running at once, those in flight
//! and those abandoned alike (a slot is reserved before the evaluation is submitted); past it the program is not
//! started (`Unavailable`) until one of them ends. One slow route thus holds at most that many threads and never
//! makes another route unavailable. A global bound, [`MAX_RUNAWAY_EVALUATIONS`], caps the threads all abandoned
//! evaluations together may hold.
//!
//! The pool is deliberately not tokio's blocking pool (`spawn_blocking`): dropping a tokio runtime waits for every
//! blocking task without limit, so one endless program would hang shutdown of the worker that started it. The pool's
//! threads are plain threads that end with the process; idle ones exit after [`POOL_KEEP_ALIVE`].
//!
//! # What the time bound does not cover
//!
//! - memory: a program such as `[repeat(1)]` allocates until the time bound abandons it, and then keeps allocating;
//! - deep non-tail recursion (`def f: 1 + f; f`) overflows its thread's stack, which aborts the process. jaq has no
//!   depth limit; pool threads get a large stack ([`WORKER_STACK_BYTES`]) so that reasonable programs stay far from it.
//!
//! # Sandbox
//!
//! The programs run with jq's usual definitions except `env` (and `$ENV`, which is never defined): route programs
//! must not read the gateway's environment, where its secrets live. `halt` and `halt_error` fail the evaluation
//! instead of exiting the process. `input`, `inputs`, `import` and `include` are not available.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{compile, data, Compiler, Ctx, ValT as _, Vars};
use jaq_json::Val;
use serde::Deserialize as _;
use serde_json::Value;

type Data = data::JustLut<Val>;
type Filter = jaq_core::Filter<Data>;

/// Native filters route programs may not call (`env` exposes the process environment, where secrets live).
const DENIED_FILTERS: &[&str] = &["env"];
/// Runtime error messages are cut to this many characters (jaq quotes whole values in them).
const MAX_MESSAGE_CHARS: usize = 300;
/// How many abandoned evaluations, of all programs together, may still be running before [`evaluate`] refuses to
/// start new ones.
pub const MAX_RUNAWAY_EVALUATIONS: u64 = 32;
/// How many evaluations of one program (by its text) may be running at once, in flight or abandoned.
pub const MAX_RUNNING_PER_PROGRAM: u64 = 8;
/// How long an idle evaluation thread waits for work before it exits.
pub const POOL_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Stack size of evaluation threads (jaq evaluates recursively).
pub const WORKER_STACK_BYTES: usize = 16 * 1024 * 1024;

/// Why compiling or running a jq program failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum JqError {
    /// The program does not compile; the message says what is wrong and where (line and column).
    #[error("invalid jq program: {0}")]
    Compile(String),
    /// The program raised an error (or called `halt`) while running.
    #[error("jq error: {0}")]
    Runtime(String),
    /// The evaluation did not finish within this bound.
    #[error("jq evaluation timed out after {0:?}")]
    Timeout(Duration),
    /// The output, serialized as JSON, is longer than this many bytes.
    #[error("jq output is larger than {0} bytes")]
    OutputTooLarge(usize),
    /// The program yielded no output where one is needed.
    #[error("jq program produced no output")]
    NoOutput,
}

/// A compiled jq program; cheap to clone, Send + Sync (it is stored in a snapshot shared by HTTP worker threads).
#[derive(Clone)]
pub struct JqProgram {
    inner: Arc<Compiled>,
}

struct Compiled {
    source: String,
    filter: Filter,
    /// Abandoned evaluations of this program text still running (shared by every compilation of the same text).
    runaway: Arc<AtomicU64>,
    /// Evaluations of this program text running, in flight or abandoned (shared likewise).
    running: Arc<AtomicU64>,
}

/// The counters of a program text, shared by all its compilations so that reloading the catalog (which compiles
/// every route again) never resets a budget.
fn counters(source: &str) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
    type Counters = std::collections::HashMap<String, (Arc<AtomicU64>, Arc<AtomicU64>)>;
    static COUNTERS: OnceLock<Mutex<Counters>> = OnceLock::new();
    let mut map = COUNTERS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    // Forget texts no compiled program uses any more and that run nothing (operators replace programs).
    if map.len() > 1_000 {
        map.retain(|_, (a, b)| Arc::strong_count(a) > 1 || b.load(Ordering::Relaxed) > 0);
    }
    let (a, b) = map.entry(source.to_owned()).or_default();
    (a.clone(), b.clone())
}

// Compile-time proof of the promise above: a compiled jaq filter is plain data and function pointers.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<JqProgram>();
};

impl fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JqProgram").field(&self.inner.source).finish()
    }
}

/// Two programs are equal when their source texts are.
impl PartialEq for JqProgram {
    fn eq(&self, other: &Self) -> bool {
        self.inner.source == other.inner.source
    }
}

impl Eq for JqProgram {}

impl JqProgram {
    /// Parses and compiles `code`. The error message names every problem found with its line and column.
    pub fn compile(code: &str) -> Result<Self, JqError> {
        let arena = Arena::default();
        let loader = Loader::new(jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs()));
        let modules =
            loader.load(&arena, File { code, path: () }).map_err(|errs| JqError::Compile(describe_load(&errs)))?;
        let funs = jaq_core::funs()
            .chain(jaq_std::funs().filter(|(name, ..)| !DENIED_FILTERS.contains(name)))
            .chain(jaq_json::funs());
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| JqError::Compile(describe_undefined(&errs)))?;
        let (runaway, running) = counters(code);
        Ok(Self { inner: Arc::new(Compiled { source: code.to_owned(), filter, runaway, running }) })
    }

    /// Abandoned evaluations of this program (by its text) that are still running.
    pub fn runaway(&self) -> u64 {
        self.inner.runaway.load(Ordering::Relaxed)
    }

    /// Evaluations of this program (by its text) running now, in flight or abandoned.
    pub fn running(&self) -> u64 {
        self.inner.running.load(Ordering::Relaxed)
    }

    /// The program's source text, as given to [`JqProgram::compile`].
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Runs synchronously on the current thread; returns the FIRST output (None if the program yields nothing),
    /// converted to serde_json::Value; error if the serialized output exceeds max_output_bytes.
    ///
    /// There is no time bound here: use [`evaluate`] for programs that come from configuration.
    pub fn first_output(&self, input: &Value, max_output_bytes: usize) -> Result<Option<Value>, JqError> {
        let Some(out) = self.first_val(to_val(input)?)? else { return Ok(None) };
        let bytes = to_json_bytes(&out, max_output_bytes)?;
        parse_output(&bytes).map(Some)
    }

    /// The first output as a jaq value; later outputs are never computed.
    fn first_val(&self, input: Val) -> Result<Option<Val>, JqError> {
        let filter = &self.inner.filter;
        let ctx = Ctx::<Data>::new(&filter.lut, Vars::new([]));
        let first = filter.id.run((ctx, input)).next();
        match first {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(exn)) => Err(JqError::Runtime(describe_exn(exn))),
        }
    }
}

/// jq truthiness: everything except false and null.
pub fn is_truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

/// Builds the value route programs read: `{"body", "headers", "source", "type"}`.
///
/// `body` is the body parsed as JSON, or, when it is not JSON, the body as a string (invalid UTF-8 replaced by
/// U+FFFD). Header names are lower-cased; a header given several times has its values joined with `", "`.
pub fn route_input<'h>(
    body: &[u8],
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    source: &str,
    event_type: Option<&str>,
) -> Value {
    let body = serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()));
    let mut header_map = serde_json::Map::new();
    for (name, value) in headers {
        match header_map.entry(name.to_ascii_lowercase()) {
            serde_json::map::Entry::Vacant(e) => {
                e.insert(Value::String(value.to_owned()));
            }
            serde_json::map::Entry::Occupied(mut e) => {
                if let Value::String(joined) = e.get_mut() {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
            }
        }
    }
    serde_json::json!({
        "body": body,
        "headers": header_map,
        "source": source,
        "type": event_type,
    })
}

/// The value route programs read for an event as it is stored: `{"body", "headers", "source", "type"}`, where
/// `headers` are the headers stored with the event and `body` is the parsed JSON document or, when the body is not
/// JSON, the body as a string. Ingest, replay and deferred evaluation at delivery all build it here, so a program
/// sees the same input whenever it runs.
pub fn stored_route_input(
    source: &str,
    headers: &Value,
    body: Result<&Value, &[u8]>,
    event_type: Option<&str>,
) -> Value {
    let body = match body {
        Ok(doc) => doc.clone(),
        Err(raw) => Value::String(String::from_utf8_lossy(raw).into_owned()),
    };
    serde_json::json!({ "body": body, "headers": headers, "source": source, "type": event_type })
}

/// [`stored_route_input`] from the stored body's bytes.
pub fn stored_route_input_from_bytes(source: &str, headers: &Value, body: &[u8], event_type: Option<&str>) -> Value {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    stored_route_input(source, headers, parsed.as_ref().ok_or(body), event_type)
}

/// What a route decides for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteOutcome {
    /// The filter yielded `false`, `null` or nothing: the route does not take this event.
    Skip,
    /// `Some(payload)`: the transform's output serialized as JSON; `None`: deliver the event body unchanged.
    Deliver(Option<Vec<u8>>),
    /// The filter or the transform failed; the message names which, and why. Deterministic: the same input fails
    /// the same way.
    Failed(String),
    /// Not decided: the evaluation overran its time bound, or the program's (or the process's) budget of runaway
    /// evaluations is spent. Ask again later; this says nothing about the event.
    Unavailable(String),
}

static ABANDONED: AtomicU64 = AtomicU64::new(0);
static RUNAWAY: AtomicU64 = AtomicU64::new(0);

/// How many evaluations [`evaluate`] has given up waiting for (timed out, or its future was dropped), since start.
pub fn abandoned_evaluations() -> u64 {
    ABANDONED.load(Ordering::Relaxed)
}

/// How many abandoned evaluations are still computing, each holding a thread.
pub fn runaway_evaluations() -> u64 {
    RUNAWAY.load(Ordering::Relaxed)
}

/// Evaluates filter then transform on an evaluation thread with a time bound: past `timeout` the outcome is
/// `Unavailable("... timed out ...")`.
///
/// The abandoned computation keeps its thread until it finishes (jaq cannot be interrupted); it is counted in
/// [`abandoned_evaluations`] and, while it runs, in [`runaway_evaluations`] and in each of its programs'
/// [`JqProgram::runaway`]. A program with [`MAX_RUNNING_PER_PROGRAM`] evaluations running, or a process with
/// [`MAX_RUNAWAY_EVALUATIONS`] runaways, refuses new evaluations (`Unavailable`). Dropping the returned future also
/// abandons the evaluation.
/// Without filter and transform the answer is `Deliver(None)` at once. Must be called within a tokio runtime with
/// its timer enabled.
pub async fn evaluate(
    filter: Option<JqProgram>,
    transform: Option<JqProgram>,
    input: Arc<Value>,
    timeout: Duration,
    max_output_bytes: usize,
) -> RouteOutcome {
    evaluate_within(filter, transform, input, timeout, max_output_bytes, MAX_RUNNING_PER_PROGRAM).await
}

/// [`evaluate`] with a per-program budget of `per_program` running evaluations.
async fn evaluate_within(
    filter: Option<JqProgram>,
    transform: Option<JqProgram>,
    input: Arc<Value>,
    timeout: Duration,
    max_output_bytes: usize,
    per_program: u64,
) -> RouteOutcome {
    if filter.is_none() && transform.is_none() {
        return RouteOutcome::Deliver(None);
    }
    let runaway = runaway_evaluations();
    if runaway >= MAX_RUNAWAY_EVALUATIONS {
        return RouteOutcome::Unavailable(format!(
            "not evaluated: {runaway} earlier jq evaluations overran their time bound and are still running"
        ));
    }
    let programs: Vec<Arc<Compiled>> = filter.iter().chain(transform.iter()).map(|p| p.inner.clone()).collect();
    // Reserve a running slot of each program before submitting, so concurrent callers cannot overshoot the budget.
    for (i, p) in programs.iter().enumerate() {
        let reserved =
            p.running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < per_program).then_some(n + 1));
        if let Err(running) = reserved {
            for q in &programs[..i] {
                q.running.fetch_sub(1, Ordering::AcqRel);
            }
            return RouteOutcome::Unavailable(format!(
                "not evaluated: {running} evaluations of this route's program are still running (in flight or past \
                 their time bound)"
            ));
        }
    }

    let job = Arc::new(Job { state: AtomicU8::new(RUNNING), stage: AtomicU8::new(STAGE_FILTER), programs });
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let worker_job = Arc::clone(&job);
    pool().submit(Box::new(move || {
        let finish = Finish(worker_job);
        if finish.0.state.load(Ordering::Acquire) == ABANDONED_STATE {
            return; // given up on while queued: nobody waits for it
        }
        let outcome = decide_in_stages(filter.as_ref(), transform.as_ref(), &input, max_output_bytes, &finish.0.stage);
        drop(finish);
        let _ = tx.send(outcome);
    }));
    let watch = Watch(job);

    match tokio::time::timeout(timeout, &mut rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => RouteOutcome::Failed(format!("{} panicked during jq evaluation", watch.stage())),
        Err(_elapsed) => {
            if watch.abandon() {
                RouteOutcome::Unavailable(format!(
                    "{} timed out after {timeout:?}; the evaluation was abandoned and keeps its thread until it ends",
                    watch.stage()
                ))
            } else {
                // It finished just at the deadline: its answer is (about to be) in the channel.
                rx.await.unwrap_or_else(|_| {
                    RouteOutcome::Failed(format!("{} panicked during jq evaluation", watch.stage()))
                })
            }
        }
    }
}

/// The same decision as [`evaluate`], synchronously on the current thread and without a time bound (for tools and
/// tests; configuration-supplied programs belong in [`evaluate`]).
pub fn decide(
    filter: Option<&JqProgram>,
    transform: Option<&JqProgram>,
    input: &Value,
    max_output_bytes: usize,
) -> RouteOutcome {
    decide_in_stages(filter, transform, input, max_output_bytes, &AtomicU8::new(STAGE_FILTER))
}

const STAGE_FILTER: u8 = 0;
const STAGE_TRANSFORM: u8 = 1;

fn decide_in_stages(
    filter: Option<&JqProgram>,
    transform: Option<&JqProgram>,
    input: &Value,
    max_output_bytes: usize,
    stage: &AtomicU8,
) -> RouteOutcome {
    let input = match to_val(input) {
        Ok(v) => v,
        Err(e) => return RouteOutcome::Failed(format!("route input: {e}")),
    };
    if let Some(filter) = filter {
        match filter.first_val(input.clone()) {
            Ok(Some(v)) if v.as_bool() => {}
            Ok(_) => return RouteOutcome::Skip,
            Err(e) => return RouteOutcome::Failed(format!("filter failed: {e}")),
        }
    }
    let Some(transform) = transform else { return RouteOutcome::Deliver(None) };
    stage.store(STAGE_TRANSFORM, Ordering::Relaxed);
    let payload = transform
        .first_val(input)
        .and_then(|out| out.ok_or(JqError::NoOutput))
        .and_then(|out| to_json_bytes(&out, max_output_bytes))
        .and_then(|bytes| parse_output(&bytes).map(|_| bytes));
    match payload {
        Ok(bytes) => RouteOutcome::Deliver(Some(bytes)),
        Err(e) => RouteOutcome::Failed(format!("transform failed: {e}")),
    }
}

fn to_val(input: &Value) -> Result<Val, JqError> {
    Val::deserialize(input).map_err(|e| JqError::Runtime(format!("input is not convertible to a jq value: {e}")))
}

/// Serializes `v` as compact JSON, stopping as soon as it grows past `max` bytes.
fn to_json_bytes(v: &Val, max: usize) -> Result<Vec<u8>, JqError> {
    let mut out = Bounded { buf: Vec::new(), max, exceeded: false };
    match jaq_json::write::write(&mut out, &jaq_json::write::Pp::default(), 0, v) {
        Ok(()) => Ok(out.buf),
        Err(_) if out.exceeded => Err(JqError::OutputTooLarge(max)),
        Err(e) => Err(JqError::Runtime(format!("cannot serialize output: {e}"))),
    }
}

/// jaq writes values JSON cannot hold (`NaN`, byte strings, non-string keys) in a JSON-like notation: refuse those.
fn parse_output(bytes: &[u8]) -> Result<Value, JqError> {
    serde_json::from_slice(bytes).map_err(|e| {
        JqError::Runtime(format!(
            "output is not valid JSON ({e}); NaN, infinite numbers, byte strings and non-string object keys cannot be \
             delivered"
        ))
    })
}

struct Bounded {
    buf: Vec<u8>,
    max: usize,
    exceeded: bool,
}

impl io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.max {
            self.exceeded = true;
            return Err(io::Error::other("output size bound exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn describe_exn(exn: jaq_core::Exn<'_, Val>) -> String {
    match exn.get_err() {
        // `error("text")` reads better without the quotes jaq's Display would add.
        Ok(err) => truncate(match err.into_val() {
            Val::TStr(text) => String::from_utf8_lossy(&text).into_owned(),
            other => other.to_string(),
        }),
        Err(exn) => match exn.get_halt() {
            Ok(code) => format!("the program called halt (exit code {code}), which route programs may not do"),
            Err(_) => "internal jaq control flow escaped the program".to_owned(),
        },
    }
}

fn truncate(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_MESSAGE_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

type LoadErrors<'s> = load::Errors<&'s str, ()>;
type CompileErrors<'s> = compile::Errors<&'s str, ()>;

fn describe_load(errs: &LoadErrors<'_>) -> String {
    let mut out = Vec::new();
    for (file, err) in errs {
        let code = file.code;
        match err {
            load::Error::Io(errs) => {
                out.extend(errs.iter().map(|(path, msg)| format!("cannot load module \"{path}\": {msg}")))
            }
            load::Error::Lex(errs) => out.extend(errs.iter().map(|(expect, found)| match expect {
                load::lex::Expect::Delim(open) => format!("unclosed `{open}` opened at {}", at(code, open)),
                expect => format!("expected {} at {}, found {}", expect.as_str(), at(code, found), found_text(found)),
            })),
            load::Error::Parse(errs) => out.extend(errs.iter().map(|(expect, found)| {
                format!("expected {} at {}, found {}", expect.as_str(), at(code, found), found_text(found))
            })),
        }
    }
    joined(out)
}

fn describe_undefined(errs: &CompileErrors<'_>) -> String {
    let mut out = Vec::new();
    for (file, undefined) in errs {
        for (name, what) in undefined {
            let (shown, denied) = match what {
                compile::Undefined::Filter(arity) => (format!("{name}/{arity}"), DENIED_FILTERS.contains(name)),
                _ => ((*name).to_owned(), false),
            };
            let hint = if denied { " (not available to route programs)" } else { "" };
            out.push(format!("undefined {} `{shown}`{hint} at {}", what.as_str(), at(file.code, name)));
        }
    }
    joined(out)
}

fn joined(messages: Vec<String>) -> String {
    if messages.is_empty() {
        "the program could not be loaded".to_owned()
    } else {
        messages.join("; ")
    }
}

/// "line L, column C" of `part`, a slice of `code`; "an unknown position" when it is not one.
fn at(code: &str, part: &str) -> String {
    let (base, start) = (code.as_ptr() as usize, part.as_ptr() as usize);
    if start < base || start > base + code.len() {
        return "an unknown position".to_owned();
    }
    let before = &code[..start - base];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

fn found_text(found: &str) -> String {
    if found.is_empty() {
        return "the end of the program".to_owned();
    }
    let snippet: String = found.chars().take(20).collect();
    if snippet.len() < found.len() {
        format!("`{snippet}…`")
    } else {
        format!("`{snippet}`")
    }
}

// --- evaluation threads ---------------------------------------------------------------------------------------------

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED_STATE: u8 = 2;

/// One evaluation, shared by the waiting caller ([`Watch`]) and the computing thread ([`Finish`]).
struct Job {
    state: AtomicU8,
    stage: AtomicU8,
    /// The programs evaluated, whose runaway counts follow the process's.
    programs: Vec<Arc<Compiled>>,
}

impl Job {
    fn count_runaway(&self, delta: i64) {
        for p in &self.programs {
            if delta > 0 {
                p.runaway.fetch_add(1, Ordering::Relaxed);
            } else {
                p.runaway.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if delta > 0 {
            RUNAWAY.fetch_add(1, Ordering::Relaxed);
        } else {
            RUNAWAY.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Held by the computing thread; on drop (also while unwinding from a panic) marks the job done, or, if the caller
/// abandoned it meanwhile, takes it off the runaway count.
struct Finish(Arc<Job>);

impl Drop for Finish {
    fn drop(&mut self) {
        if self.0.state.compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire).is_err() {
            self.0.count_runaway(-1);
        }
        for p in &self.0.programs {
            p.running.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Held by the caller; abandoning on drop covers a caller whose future is dropped mid-evaluation.
struct Watch(Arc<Job>);

impl Watch {
    /// Gives up on the job unless it is done already; true if this call abandoned it.
    fn abandon(&self) -> bool {
        // Counted before the exchange so that the computing thread's decrement can never precede the increment.
        self.0.count_runaway(1);
        if self.0.state.compare_exchange(RUNNING, ABANDONED_STATE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            ABANDONED.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.0.count_runaway(-1);
            false
        }
    }

    fn stage(&self) -> &'static str {
        match self.0.stage.load(Ordering::Relaxed) {
            STAGE_FILTER => "filter",
            _ => "transform",
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.0.state.load(Ordering::Acquire) == RUNNING {
            self.abandon();
        }
    }
}

type Task = Box<dyn FnOnce() + Send + 'static>;

/// A grow-on-demand pool of plain threads: a task goes to an idle thread, or to a new one when none is idle (so a
/// runaway program never delays other evaluations); threads idle for [`POOL_KEEP_ALIVE`] exit.
struct Pool {
    state: Mutex<PoolState>,
    wake: Condvar,
}

struct PoolState {
    queue: VecDeque<Task>,
    idle: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool { state: Mutex::new(PoolState { queue: VecDeque::new(), idle: 0 }), wake: Condvar::new() })
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn submit(&'static self, task: Task) {
        let mut state = self.lock();
        state.queue.push_back(task);
        let enough_idle = state.idle >= state.queue.len();
        drop(state);
        if enough_idle {
            self.wake.notify_one();
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("hookgate-jq".to_owned())
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || self.work());
        if let Err(e) = spawned {
            // The task stays queued for the next free thread; meanwhile the caller's time bound answers for it.
            tracing::error!(error = %e, "cannot start a jq evaluation thread");
        }
    }

    fn work(&self) {
        let mut state = self.lock();
        loop {
            if let Some(task) = state.queue.pop_front() {
                drop(state);
                // A panic is already reported by the panic hook; the caller sees its channel closed.
                let _ = catch_unwind(AssertUnwindSafe(task));
                state = self.lock();
                continue;
            }
            state.idle += 1;
            let (guard, wait) = self.wake.wait_timeout(state, POOL_KEEP_ALIVE).unwrap_or_else(PoisonError::into_inner);
            state = guard;
            state.idle -= 1;
            if wait.timed_out() && state.queue.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: usize = 64 * 1024;
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn program(code: &str) -> JqProgram {
        JqProgram::compile(code).unwrap_or_else(|e| panic!("{code:?} should compile: {e}"))
    }

    fn compile_error(code: &str) -> String {
        match JqProgram::compile(code) {
            Err(JqError::Compile(message)) => message,
            Err(other) => panic!("{code:?}: expected a compile error, got {other:?}"),
            Ok(_) => panic!("{code:?} should not compile"),
        }
    }

    fn order_event() -> Arc<Value> {
        Arc::new(route_input(
            br#"{"kind": "order", "id": 42, "n": 7}"#,
            [("X-Env", "prod"), ("Content-Type", "application/json")],
            "shop",
            Some("order.created"),
        ))
    }

    #[test]
    fn jq_program_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<JqProgram>();
    }

    #[test]
    fn jq_compile_errors_name_the_problem_and_where() {
        let dangling_pipe = compile_error(".body | ");
        assert!(dangling_pipe.contains("expected term"), "{dangling_pipe}");
        assert!(dangling_pipe.contains("end of the program"), "{dangling_pipe}");

        let unclosed = compile_error("foo(");
        assert!(unclosed.contains("unclosed `(`"), "{unclosed}");
        assert!(unclosed.contains("line 1, column 4"), "{unclosed}");

        let undefined = compile_error(".body |\n  nosuchfilter(1)");
        assert!(undefined.contains("undefined filter `nosuchfilter/1`"), "{undefined}");
        assert!(undefined.contains("line 2, column 3"), "{undefined}");

        let err = JqProgram::compile("if . then 1").unwrap_err();
        assert!(err.to_string().starts_with("invalid jq program: "), "{err}");
    }

    #[test]
    fn jq_programs_cannot_read_the_environment() {
        let env = compile_error("env");
        assert!(env.contains("`env/0`") && env.contains("not available"), "{env}");
        assert!(compile_error("$ENV").contains("undefined variable"));
    }

    #[test]
    fn jq_first_output_and_truthiness() {
        let input = json!({"body": {"items": [1, 2, 3]}});
        assert_eq!(program(".body.items[]").first_output(&input, LIMIT), Ok(Some(json!(1))));
        assert_eq!(program("empty").first_output(&input, LIMIT), Ok(None));
        assert_eq!(program(".body.items | map(. * 2)").first_output(&input, LIMIT), Ok(Some(json!([2, 4, 6]))));
        assert_eq!(program(".body.items").first_output(&input, 5), Err(JqError::OutputTooLarge(5)));
        assert!(matches!(program("nan").first_output(&input, LIMIT), Err(JqError::Runtime(_))));
        assert!(is_truthy(&json!(0)) && is_truthy(&json!("")) && is_truthy(&json!([])));
        assert!(!is_truthy(&json!(null)) && !is_truthy(&json!(false)));
        assert_eq!(program(".").source(), ".");
    }

    #[test]
    fn jq_route_input_shape() {
        let input = route_input(b"not json", [("X-A", "1"), ("x-a", "2")], "src", None);
        assert_eq!(input, json!({"body": "not json", "headers": {"x-a": "1, 2"}, "source": "src", "type": null}));
        let input = route_input(br#"{"a": 1}"#, [], "src", Some("t"));
        assert_eq!(input["body"], json!({"a": 1}));
        assert_eq!(input["type"], json!("t"));
    }

    #[tokio::test]
    async fn jq_filter_passes_or_skips() {
        let is_order = program(r#".body.kind == "order""#);
        let outcome = evaluate(Some(is_order.clone()), None, order_event(), TIMEOUT, LIMIT).await;
        assert_eq!(outcome, RouteOutcome::Deliver(None));

        let refund = Arc::new(route_input(br#"{"kind": "refund"}"#, [], "shop", None));
        assert_eq!(evaluate(Some(is_order), None, refund, TIMEOUT, LIMIT).await, RouteOutcome::Skip);
    }

    #[tokio::test]
    async fn jq_select_on_headers() {
        let prod = program(r#"select(.headers["x-env"] == "prod")"#);
        assert_eq!(
            evaluate(Some(prod.clone()), None, order_event(), TIMEOUT, LIMIT).await,
            RouteOutcome::Deliver(None)
        );

        let staging = Arc::new(route_input(b"{}", [("x-env", "staging")], "shop", None));
        assert_eq!(evaluate(Some(prod), None, staging, TIMEOUT, LIMIT).await, RouteOutcome::Skip);
    }

    #[tokio::test]
    async fn jq_transform_builds_the_payload() {
        let transform = program("{id: .body.id, src: .source, next: (.body.n + 1)}");
        let outcome = evaluate(None, Some(transform.clone()), order_event(), TIMEOUT, LIMIT).await;
        assert_eq!(outcome, RouteOutcome::Deliver(Some(br#"{"id":42,"src":"shop","next":8}"#.to_vec())));

        let filter = program(r#".type == "order.created""#);
        let outcome = evaluate(Some(filter), Some(transform), order_event(), TIMEOUT, LIMIT).await;
        assert!(matches!(outcome, RouteOutcome::Deliver(Some(_))), "{outcome:?}");
    }

    #[tokio::test]
    async fn jq_runtime_errors_name_filter_or_transform() {
        let bad = program(r#".body.n + "x""#);
        let RouteOutcome::Failed(why) = evaluate(Some(bad.clone()), None, order_event(), TIMEOUT, LIMIT).await else {
            panic!("a failing filter must fail the route");
        };
        assert!(why.starts_with("filter failed: jq error: "), "{why}");

        let RouteOutcome::Failed(why) = evaluate(None, Some(bad), order_event(), TIMEOUT, LIMIT).await else {
            panic!("a failing transform must fail the route");
        };
        assert!(why.starts_with("transform failed: jq error: "), "{why}");
    }

    #[tokio::test]
    async fn jq_halt_fails_instead_of_exiting() {
        for code in ["halt", r#""bye" | halt_error(3)"#] {
            let outcome = evaluate(Some(program(code)), None, order_event(), TIMEOUT, LIMIT).await;
            assert!(matches!(&outcome, RouteOutcome::Failed(why) if why.contains("halt")), "{code}: {outcome:?}");
        }
    }

    #[tokio::test]
    async fn jq_no_output() {
        let empty = program("empty");
        assert_eq!(evaluate(Some(empty.clone()), None, order_event(), TIMEOUT, LIMIT).await, RouteOutcome::Skip);
        let outcome = evaluate(None, Some(empty), order_event(), TIMEOUT, LIMIT).await;
        assert_eq!(outcome, RouteOutcome::Failed(format!("transform failed: {}", JqError::NoOutput)));
        assert_eq!(evaluate(None, None, order_event(), TIMEOUT, LIMIT).await, RouteOutcome::Deliver(None));
    }

    #[tokio::test]
    async fn jq_output_over_the_size_bound_fails() {
        let big = program("[range(1000)]");
        let outcome = evaluate(None, Some(big), order_event(), TIMEOUT, 100).await;
        assert_eq!(outcome, RouteOutcome::Failed(format!("transform failed: {}", JqError::OutputTooLarge(100))));
    }

    #[tokio::test]
    async fn jq_endless_program_times_out_and_is_counted() {
        let before = abandoned_evaluations();
        // Constant memory, and no first output until the loop ends (seconds from now, far past the bound).
        let endless = program("last(range(1e8))");
        let outcome = evaluate(Some(endless), None, order_event(), Duration::from_millis(100), LIMIT).await;
        let RouteOutcome::Unavailable(why) = outcome else { panic!("expected a timeout, got {outcome:?}") };
        assert!(why.starts_with("filter timed out"), "{why}");
        assert!(abandoned_evaluations() > before);
        assert!(runaway_evaluations() >= 1);

        // The runaway holds its own thread: other evaluations go on.
        let outcome = evaluate(None, Some(program(".source")), order_event(), TIMEOUT, LIMIT).await;
        assert_eq!(outcome, RouteOutcome::Deliver(Some(br#""shop""#.to_vec())));
    }

    #[tokio::test]
    async fn jq_a_slow_route_spends_only_its_own_budget_which_a_recompilation_keeps() {
        // Seconds of work on one thread, then it ends: the budget of one is spent while it runs.
        let code = "last(range(100000000)) | true";
        let slow = program(code);
        let outcome =
            evaluate_within(Some(slow.clone()), None, order_event(), Duration::from_millis(20), LIMIT, 1).await;
        assert!(matches!(outcome, RouteOutcome::Unavailable(_)), "{outcome:?}");
        // Refused at once, without a new thread, by this compilation and by a fresh one of the same text (a reload).
        for p in [slow.clone(), program(code)] {
            let outcome = evaluate_within(Some(p.clone()), None, order_event(), TIMEOUT, LIMIT, 1).await;
            let RouteOutcome::Unavailable(why) = outcome else { panic!("expected a refusal, got {outcome:?}") };
            assert!(why.contains("this route's program"), "{why}");
            assert_eq!(p.running(), 1);
        }
        // Another route is not affected.
        let other = program(".source == \"shop\"");
        assert_eq!(
            evaluate_within(Some(other), None, order_event(), TIMEOUT, LIMIT, 1).await,
            RouteOutcome::Deliver(None)
        );
    }
}
