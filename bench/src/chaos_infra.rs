//! The servers the chaos suite owns: a temporary directory, a PostgreSQL cluster of its own (`initdb` + `pg_ctl` on
//! a spare port), a `redis-server` of its own, a TCP proxy in front of that Redis that can blackhole it, and the
//! release `hookgate` binary as a child process.
//!
//! Every one of them is a drop guard: whatever happens (an error, a panic unwinding), the processes the suite
//! started are stopped by their own pid (PostgreSQL through `pg_ctl -D <its own data dir>`, which signals the pid
//! in that directory's `postmaster.pid`) and the temporary directory is removed. Nothing else is ever stopped: the
//! machine's own PostgreSQL (5432) and Redis (6379) are never touched.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::client::Conn;
use crate::workload::get_request;

/// Name prefix of the suite's temporary directories (`<tmp>/hookgate-chaos-<pid>-<nanos>`).
pub const DIR_PREFIX: &str = "hookgate-chaos-";

/// A port nobody listens on right now (bound to port 0, then released).
pub fn spare_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Is there a process with this pid?
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The suite's temporary directory, removed (with everything in it) when dropped.
pub struct TempRoot {
    pub path: PathBuf,
}

impl TempRoot {
    pub fn create() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        sweep_stale_roots();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let path = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        // PostgreSQL runs as `postgres` when the suite runs as root: it must be able to reach its data directory.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { path })
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("chaos: could not remove {}: {e}", self.path.display());
        }
    }
}

/// Directories left by an earlier run that was killed before its guards ran (SIGKILL, Ctrl-C): if the run's
/// process is gone, the PostgreSQL cluster it started in its own directory is stopped and the directory removed.
fn sweep_stale_roots() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let data = entry.path().join("pg").join("data");
        if data.join("postmaster.pid").exists() {
            if let Ok(bin) = pg_bindir() {
                let _ = pg_command(&bin, "pg_ctl", running_as_root())
                    .args(["stop", "-m", "immediate", "-w", "-t", "10", "-D"])
                    .arg(&data)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        eprintln!("chaos: removing {} left by an earlier run (pid {pid}, gone)", entry.path().display());
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// PostgreSQL's binaries: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, b)| b)
        .context("no PostgreSQL binaries: neither pg_config --bindir nor /usr/lib/postgresql/*/bin")
}

/// A PostgreSQL command, run as `postgres` when the suite runs as root (initdb and postgres refuse root).
fn pg_command(bindir: &Path, program: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bindir.join(program));
        c
    } else {
        Command::new(bindir.join(program))
    }
}

fn run_checked(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A PostgreSQL cluster of the suite's own, in `<root>/pg/data`, listening on 127.0.0.1:`port` only.
pub struct PgCluster {
    bindir: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl PgCluster {
    pub fn init(root: &Path) -> anyhow::Result<Self> {
        let bindir = pg_bindir()?;
        let as_postgres = running_as_root();
        let dir = root.join("pg");
        let data = dir.join("data");
        std::fs::create_dir_all(&dir)?;
        if as_postgres {
            run_checked(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&dir);
                    c
                },
                "chown of the PostgreSQL directory",
            )?;
        }
        let mut initdb = pg_command(&bindir, "initdb", as_postgres);
        initdb.args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "-D"]).arg(&data);
        run_checked(initdb, "initdb")?;
        let cluster = Self { bindir, dir, data, port: spare_port()?, as_postgres };
        cluster.start()?;
        Ok(cluster)
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        // fsync = off: the suite crashes processes (hookgate, PostgreSQL itself with `-m immediate`), never the
        // machine, and a committed transaction's WAL is in the page cache either way; it spares a shared disk.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=60",
            self.port,
            self.dir.display()
        );
        let mut c = pg_command(&self.bindir, "pg_ctl", self.as_postgres);
        c.args(["start", "-w", "-t", "60", "-l"]).arg(self.dir.join("postgres.log")).arg("-o").arg(options).arg("-D");
        c.arg(&self.data);
        // Not through pipes: the server pg_ctl leaves running must not hold a pipe this process waits on.
        let out = self.dir.join("pg_ctl.out");
        let file = std::fs::File::create(&out)?;
        let status = c
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .status()
            .context("running pg_ctl start")?;
        if !status.success() {
            bail!("pg_ctl start failed ({status}): {}\n{}", tail(&out, 10), self.log_tail(10));
        }
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: a crash of the server (no checkpoint, recovery at the next start).
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        let mut c = pg_command(&self.bindir, "pg_ctl", self.as_postgres);
        c.args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"]).arg(&self.data);
        run_checked(c, "pg_ctl stop -m immediate")
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("postgres.log"), lines)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            if let Err(e) = self.stop_immediate() {
                eprintln!("chaos: stopping the suite's PostgreSQL: {e:#}");
            }
        }
    }
}

/// The last `lines` lines of a text file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `redis-server` of the suite's own on 127.0.0.1:`port`, without persistence.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("redis");
        std::fs::create_dir_all(&dir)?;
        let mut r = Self { port: spare_port()?, dir, child: None };
        r.restart().await?;
        Ok(r)
    }

    /// Starts the server (again) on the same port, waiting until it answers PING.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(self.dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if redis_ping(self.port).await {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("redis-server exited at start ({status}): {}", tail(&self.dir.join("redis.log"), 10));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not answer PING on port {} within 20 s", self.port)
    }

    /// SIGKILL of the server the suite started (by its pid).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn redis_ping(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        buf[..n].starts_with(b"+PONG").then_some(())
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Some(())))
}

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Accepts connections and keeps them open, but moves no byte in either direction.
    Blackhole,
    Shutdown,
}

/// A TCP proxy in front of a target (the suite's Redis) that can blackhole it.
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, rx) = watch::channel(Mode::Forward);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let rx = rx.clone();
                if *rx.borrow() == Mode::Shutdown {
                    break;
                }
                tokio::spawn(proxy_connection(inbound, target, rx));
            }
        });
        Ok(Self { port, mode, accept })
    }

    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    pub fn forward(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Shutdown);
        self.accept.abort();
    }
}

/// Waits until the mode lets bytes through; false once the proxy shuts down.
async fn flowing(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Forward => return true,
            Mode::Shutdown => return false,
            Mode::Blackhole => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn proxy_connection(inbound: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    // A connection accepted while blackholed stays open and silent until forwarding resumes.
    if !flowing(&mut mode).await {
        return;
    }
    let Ok(Ok(outbound)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await else {
        return;
    };
    let (ri, wi) = inbound.into_split();
    let (ro, wo) = outbound.into_split();
    tokio::select! {
        _ = pump(ri, wo, mode.clone()) => {}
        _ = pump(ro, wi, mode) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !flowing(&mut mode).await {
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Bytes read just as the blackhole began are held until forwarding resumes.
                if !flowing(&mut mode).await || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ = mode.changed() => {}
        }
    }
}

/// The release hookgate as a child process, restartable on the same port.
pub struct Hookgate {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    pub port: u16,
    child: Option<Child>,
    pub starts: u32,
}

impl Hookgate {
    pub fn new(bin: PathBuf, config: PathBuf, log: PathBuf, port: u16, env: Vec<(String, String)>) -> Self {
        Self { bin, config, log, env, port, child: None, starts: 0 }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKGATE_")) {
            cmd.env_remove(k);
        }
        cmd.arg("--config").arg(&self.config).arg("serve");
        cmd.env("RUST_LOG", std::env::var("CHAOS_LOG").unwrap_or_else(|_| "warn".into()));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Starts the process without waiting for it.
    pub fn spawn_only(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Starts the process and waits until `/readyz` answers 200 (retrying a start that exits at once, e.g. while
    /// the port is still held by the previous process).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        for attempt in 0..5 {
            self.kill9();
            self.spawn()?;
            match self.wait_ready(Duration::from_secs(60)).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 4 && !self.running() => {
                    eprintln!("chaos: hookgate exited at start ({e:#}); starting it again");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let req = get_request(&format!("127.0.0.1:{}", self.port), "/readyz");
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if !self.running() {
                bail!("hookgate exited; its log ends with:\n{}", tail(&self.log, 15));
            }
            if let Ok(Ok(200)) = tokio::time::timeout(Duration::from_secs(2), Conn::new(addr).send(&req)).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("hookgate was not ready within {limit:?}; its log ends with:\n{}", tail(&self.log, 15))
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9` of the process the suite started (by its pid), and reaping it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (graceful), then SIGKILL after `limit`.
    pub fn terminate(&mut self, limit: Duration) {
        let Some(c) = self.child.as_mut() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for Hookgate {
    fn drop(&mut self) {
        self.kill9();
    }
}
